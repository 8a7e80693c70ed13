#!/usr/bin/env bash
# Run on the GPU machine (the device tool): install the carried wheels, then the benchmark.
#   carry: .whl   command: bash benchmarks/device_run.sh [engine_bench args...]
set -uo pipefail
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
python3 benchmarks/engine_bench.py --out "${OUT:-benchmarks/results}" "$@" 2>&1 | grep -v -E "FutureWarning|deprecate\(|warnings.warn|LoRACompatible"
