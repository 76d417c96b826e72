#!/usr/bin/env bash
# `make demo`: the training pipeline end to end on this machine through kfp.local, on
# synthetic brain-MRI phantoms, with the shared Imagenette weights when they are beside the
# checkout (else a random init). No server needed: MLflow uses a local SQLite store.
# The settings are measured (benchmarks/results/demo-settings.md): 800 phantoms and 20 epochs
# give a model that is right on the clean test split and does not collapse under noise; the
# demo's old 400 phantoms and 4 epochs (36 optimiser steps) left it near chance.
set -euo pipefail
out="${DEMO_OUT:-out/demo}"
weights="none"
candidate="${ENTROPY_FT_WEIGHTS_DIR:-../shared/weights}/resnet18-imagenette.pt"
if [ -f "$candidate" ]; then weights="$candidate"; fi
data="synthetic:800"
echo ">> entropy-ft run: $data at 64 px, resnet18 (weights: $weights), 20 epochs; artifacts under $out" >&2
summary="$(.venv/bin/entropy-ft run --root "$out" --data "$data" --image-size 64 --weights "$weights" \
  --profile-images 128 --epochs 20 --batch-size 32 --model-name entropy-ft-demo)"
echo "$summary"
.venv/bin/python - "$summary" "$data" <<'PY'
import json, sys
s, data = json.loads(sys.argv[1]), sys.argv[2]
print("\nDemo finished in %.0f s. Outputs:" % s["seconds"])
for name, path in s["outputs"].items():
    print(f"  {name:<13}{path}")
print("Reports (open in a browser):")
for path in s["reports"]:
    print(f"  {path}")
print(f"\nThe data is synthetic ({data}: phantoms drawn by entropy-ft, not scans); the same pipeline on a real "
      "archive: .venv/bin/entropy-ft run --data brain-tumor-mri-kaggle.zip")
print("\nOpen the MLflow UI on this run:\n  .venv/bin/" + s["mlflow_ui"] + "\n  then browse http://127.0.0.1:5000")
PY
