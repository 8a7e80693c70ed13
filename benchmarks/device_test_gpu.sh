#!/usr/bin/env bash
# The GPU-only tests on the GPU machine (device tool), results into $OUT and benchmarks/results:
#   carry: .whl   command: COMMIT=<sha> bash benchmarks/device_test_gpu.sh
# The device's python3 has torch (CUDA) and no venv: the carried wheels (.whl/) are installed
# into /tmp/site as for benchmarks/device_run.sh. Besides the engine's wheels, the tests need
# pytest and pytest-timeout (+ pluggy, iniconfig, packaging, pygments if the device lacks them).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1 SIP_TTS_NO_SKIPS=1
python3 -c "import pytest, pytest_timeout, torch, triton" \
  || { echo "missing: put the wheels of pytest, pytest-timeout, pluggy, iniconfig, packaging, pygments in .whl/"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout ${TEST_GPU_S:-560} python3 benchmarks/test_gpu.py --out "$OUT" -q 2>&1 \
  | grep -v -E "FutureWarning|deprecate\(|warnings.warn|LoRACompatible" | tee "$OUT/test_gpu.log" | tail -60
exit "${PIPESTATUS[0]}"
