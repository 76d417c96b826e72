#!/usr/bin/env bash
# The GPU figures in one call: the bare-loop floor (perf.py --only floor), the paper's grid with
# its budget sweep (paper.py --paper), then torch.compile and CUDA graphs against eager over whole
# runs (perf.py --only compile), for the architectures named, on a bare GPU machine that has
# torch, torchvision, pyarrow, pillow and safetensors but no kfp and no mlflow. The results so far
# are copied to $OUT after every stage, so a call cut short by its time limit still returns them.
#
#   here:   .venv/bin/python benchmarks/device_stage.py --archs squeezenet1_1    (writes .device/)
#   there:  bash benchmarks/device_check.sh squeezenet1_1                        (carry .device)
#   proof on a CPU at small settings:
#           PYTHON=.venv/bin/python bash benchmarks/device_check.sh squeezenet1_1 small
#
# Inputs (.device/, from device_stage.py): wheels/ (installed into a temporary folder, not into
# the machine's Python), weights/<arch>-imagenette.safetensors, and the Kaggle zip on the first
# call. The zip is ingested once into benchmarks/.cache, which later calls on the same machine
# reuse. Results: benchmarks/results/device/ (device-MODE-ARCHS.{md,json}, perf.{md,json}, plots), and
# when $OUT is set (the device tool's output folder) a tarball of it plus the two md files there.
# Resumable: paper.py keeps every finished run, so a second call completes an interrupted grid.
set -euo pipefail

ARCHS=${1:-squeezenet1_1}
MODE=${2:-paper}  # paper: the paper's settings; small: a few minutes on a CPU, to prove the script
STAGE=${STAGE:-.device}
RESULTS=${RESULTS:-benchmarks/results/device}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 ENTROPY_FT_NO_PROGRESS=1
started=$(date +%s)
say() { echo "device_check: $(( $(date +%s) - started )) s: $*"; }
publish() {  # what is done so far, to the device tool's output folder
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/device-results.tgz" -C "$RESULTS" .
    cp "$RESULTS"/*.md "$OUT"/
  fi
}

case "$MODE" in
  paper) paper_flags=(--paper) perf_flags=(--floor-size 224 --floor-images 3000 --repeats 3)
         compile_flags=(--floor-size 224 --floor-images 3000 --repeats 1 --compile-epochs 3
                        --compile-modes default,reduce-overhead) ;;
  small) paper_flags=(--image-size 64 --epochs 2 --seeds 1 --budgets 0.5 --profile-images 128 --in-process)
         perf_flags=(--floor-size 64 --floor-images 300 --repeats 1)
         compile_flags=(--floor-size 64 --floor-images 300 --repeats 1 --compile-epochs 2 --compile-modes default) ;;
  *) echo "device_check: MODE $MODE: expected paper or small" >&2; exit 2 ;;
esac
[ -d "$STAGE/weights" ] || { echo "device_check: $STAGE/weights: missing; run benchmarks/device_stage.py here first" >&2; exit 2; }

site=$(mktemp -d)
if compgen -G "$STAGE/wheels/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$STAGE"/wheels/*.whl
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" - <<'PY'
import importlib.util, sys
absent = [m for m in ("kfp", "mlflow") if importlib.util.find_spec(m)]
import entropy_ft.steps.finetune, entropy_ft.steps.ingest, entropy_ft.steps.profile, entropy_ft.steps.select  # noqa
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "")
      + (f"; also installed here, not needed: {', '.join(absent)}" if absent else "; no kfp, no mlflow"))
PY

archive=$(compgen -G "$STAGE/*.zip" | head -1 || true)
archive=${archive:-$STAGE/brain-tumor-mri-kaggle.zip}  # not read when benchmarks/.cache holds the dataset
mkdir -p "$RESULTS"
first=${ARCHS%%,*}
say "perf floor ($first)"
"$PY" benchmarks/perf.py --only floor --arch "$first" --weights-dir "$STAGE/weights" --results "$RESULTS" \
  "${perf_flags[@]}"
publish
say "paper grid and budget sweep ($ARCHS)"
"$PY" benchmarks/paper.py --archs "$ARCHS" --archive "$archive" --weights-dir "$STAGE/weights" \
  --results "$RESULTS" --name "device-$MODE-${ARCHS//,/-}" "${paper_flags[@]}"
publish
say "perf compile ($first)"
"$PY" benchmarks/perf.py --only compile --arch "$first" --weights-dir "$STAGE/weights" --results "$RESULTS" \
  "${compile_flags[@]}"
publish
say "done"
