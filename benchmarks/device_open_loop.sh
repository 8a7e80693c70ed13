#!/usr/bin/env bash
# On the GPU machine (device tool): the open-loop load (benchmarks/open_loop.py) and, optionally,
# the watermark probes; logs and results into $OUT.
#   carry: .whl   command: COMMIT=<sha> bash benchmarks/device_open_loop.sh
# OPEN_ARGS replaces the open-loop arguments below (OPEN=0 skips it); WM=1 runs watermark_batch.py
# (per window vs batched); GPU_TEST=1 the watermark's GPU and CPU tests; STARTUP=1 startup_cost.py
# (first audio of 16 streams at once with and without the watermark); WENGINE=1 watermark_engine.py
# (first audio with each way of marking, one engine).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
quiet() { grep -v -E "FutureWarning|deprecate\(|warnings.warn|LoRACompatible|Token -> Mel|it/s\]|pkg_resources"; }
if [ "${GPU_TEST:-0}" = 1 ]; then
  timeout ${TEST_S:-150} python3 -m pytest -q -p no:cacheprovider -rA tests_gpu/test_watermark.py \
    tests/test_watermark_batch.py 2>&1 | quiet > "$OUT/gpu_test.log"
  echo "gpu_test rc=${PIPESTATUS[0]}" >> "$OUT/gpu_test.log"; tail -6 "$OUT/gpu_test.log"
fi
if [ "${WM:-0}" = 1 ]; then
  timeout ${WM_S:-120} python3 benchmarks/watermark_batch.py --out "$OUT" 2>&1 | quiet > "$OUT/watermark_batch.log"
  echo "watermark rc=${PIPESTATUS[0]}" >> "$OUT/watermark_batch.log"; cat "$OUT/watermark_batch.md" 2>/dev/null
fi
if [ "${WENGINE:-0}" = 1 ]; then
  timeout ${WENGINE_S:-150} python3 benchmarks/watermark_engine.py --out "$OUT" 2>&1 | quiet > "$OUT/watermark_engine.log"
  echo "watermark_engine rc=${PIPESTATUS[0]}" >> "$OUT/watermark_engine.log"; cat "$OUT/watermark_engine.md" 2>/dev/null
fi
if [ "${STARTUP:-0}" = 1 ]; then
  timeout ${STARTUP_S:-240} python3 benchmarks/startup_cost.py --long-repeat 0 --out "$OUT" 2>&1 | quiet \
    > "$OUT/startup_cost.log"
  echo "startup_cost rc=${PIPESTATUS[0]}" >> "$OUT/startup_cost.log"; tail -3 "$OUT/startup_cost.log"
  cat "$OUT/startup_cost.md" 2>/dev/null | head -9
fi
if [ "${OPEN:-1}" = 1 ]; then
  timeout ${OPEN_S:-420} python3 benchmarks/open_loop.py --out "$OUT" --stack-dump-after $(( ${OPEN_S:-420} - 10 )) \
    ${OPEN_ARGS:---burst 128 --burst-seconds 6 --rates 22,30,38,44 --window 12 --lead-in 5 --max-slots 384 --saturate 10 --no-stop} 2>&1 | quiet \
    > "$OUT/open_loop.log"
  echo "open_loop rc=${PIPESTATUS[0]}" >> "$OUT/open_loop.log"
  grep -E "^  |stock|warm-up|graphs|rc=" "$OUT/open_loop.log" | tail -30
fi
