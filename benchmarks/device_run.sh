#!/usr/bin/env bash
# One device-machine run: GPU tests, then the GPU benchmark; logs and JSON under $OUT.
#
# Prepare the wheels the GPU image lacks first (on the development machine), with the explorer's
# (its test modules import them; the GPU tests themselves do not need them):
#   ../shared/tools/gpu-wheels.sh starlette==1.10.0 uvicorn==0.54.0 python-multipart==0.0.34 \
#     httpx==0.28.1 anyio h11 sniffio idna httpcore certifi
# then run this script on the device machine with `.whl` carried:
#   bash benchmarks/device_run.sh [benchmark options...]
set -uo pipefail
out=${OUT:-/tmp/krypton-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
# A test module whose imports the image lacks is reported, not fatal: the GPU tests still run.
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors \
  tests 2>&1 | tail -30 \
  | tee "$out/gpu_tests.log"
python3 -m benchmarks.gpu --json "$out/gpu.json" "$@" 2>&1 | tee "$out/gpu_bench.log"
