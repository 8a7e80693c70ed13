#!/usr/bin/env bash
# Run on the GPU machine (the device tool): install the carried wheels, then the benchmark.
#   carry: .whl   command: bash benchmarks/device_run.sh [engine_bench args...]
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
python3 benchmarks/engine_bench.py --out "${OUT:-benchmarks/results}" "$@" 2>&1 | grep -v -E "FutureWarning|deprecate\(|warnings.warn|LoRACompatible"
