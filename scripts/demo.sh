#!/usr/bin/env bash
# `make demo`: the training pipeline end to end on this machine through kfp.local, on
# synthetic brain-MRI phantoms, with the shared Imagenette weights when they are beside the
# checkout (else a random init). No server needed: MLflow uses a local SQLite store.
set -euo pipefail
out="${DEMO_OUT:-out/demo}"
weights="none"
candidate="${ENTROPY_FT_WEIGHTS_DIR:-../shared/weights}/resnet18-imagenette.pt"
if [ -f "$candidate" ]; then weights="$candidate"; fi
echo ">> entropy-ft run: synthetic:400 at 64 px, resnet18 (weights: $weights), 4 epochs; artifacts under $out" >&2
summary="$(.venv/bin/entropy-ft run --root "$out" --data synthetic:400 --image-size 64 --weights "$weights" \
  --profile-images 128 --epochs 4 --batch-size 32 --model-name entropy-ft-demo)"
echo "$summary"
.venv/bin/python - "$summary" <<'PY'
import json, sys
s = json.loads(sys.argv[1])
print("\nDemo finished in %.0f s. Outputs:" % s["seconds"])
for name, path in s["outputs"].items():
    print(f"  {name:<13}{path}")
print("Reports (open in a browser):")
for path in s["reports"]:
    print(f"  {path}")
print("\nOpen the MLflow UI on this run:\n  .venv/bin/" + s["mlflow_ui"] + "\n  then browse http://127.0.0.1:5000")
PY
