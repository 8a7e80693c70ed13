#!/usr/bin/env bash
# The HTTP API's overhead on the GPU machine (the device tool), one command:
#   here: bash benchmarks/device_wheels.sh          (fills .whl; httptools among them)
#   device: carry .whl, command: COMMIT=$(git rev-parse --short HEAD) bash benchmarks/device_api_load.sh
# Chatterbox (random full-size weights): N = 1, 32, 128 streams and 100 calls beside 32 API streams,
# then the burst engine (benchmarks/burst_engine.py) on the same host's CPUs, TTFB part only.
# Writes api_load_chatterbox_h200.{json,md} and api_load_burst_h200.{json,md} into $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import httptools" || echo "httptools missing: uvicorn falls back to h11 (rebuild .whl)"
out=${OUT:-benchmarks/results}
python3 benchmarks/api_load.py --engine chatterbox --modes loop --rounds 2 --tag h200 --out "$out" 2>&1 \
  | grep -v -E "FutureWarning|deprecate\(|warnings.warn|LoRACompatible"
python3 benchmarks/api_load.py --engine burst --modes loop --no-calls --tag h200 --out "$out"
