#!/usr/bin/env bash
# Run here, before a session that has a GPU: stages into ignored folders what benchmarks/gpu_run.sh needs
# on the device machine, whose image lacks datasets, pydantic and seqeval and cannot reach a registry.
#   .whl/                 wheels for Python 3.12 / x86-64 (a few MB)
#   .carry/minilm-fp16/   all-MiniLM-L6-v2 in fp16, and .carry/data/imdb/ (../shared/tools/device_prep.sh)
# Model and IMDB together exceed the 64 MiB a call carries, so the device steps are three calls while the
# machine stays warm (files under /tmp there survive between them):
#   1. carry [".whl", ".carry/minilm-fp16"]  command: bash benchmarks/gpu_run.sh model
#   2. carry [".whl", ".carry/data"]         command: bash benchmarks/gpu_run.sh gpu
#   3. carry [".whl"]                        command: bash benchmarks/gpu_run.sh throughput
# Each returns BENCHMARKS.md (with the new rows appended) and the logs under $OUT.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.3 pydantic_core==2.50.4 \
  annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
python3 -m pip wheel -q --no-deps -w .whl seqeval==1.2.2  # published as a source archive only; pure Python
../shared/tools/device_prep.sh model
../shared/tools/device_prep.sh data imdb
du -sh .whl .carry/*
