#!/usr/bin/env bash
# On the GPU machine (device tool): the watermark per window vs batched, then the open-loop load
# with a cold burst before and after Scheduler.warm_up; logs and results into $OUT.
#   carry: .whl   command: COMMIT=<sha> bash benchmarks/device_open_loop.sh
# OPEN_ARGS replaces the open-loop arguments below; WM=0 skips the watermark probe.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
quiet() { grep -v -E "FutureWarning|deprecate\(|warnings.warn|LoRACompatible|Token -> Mel|it/s\]"; }
if [ "${WM:-1}" = 1 ]; then
  timeout ${WM_S:-120} python3 benchmarks/watermark_batch.py --out "$OUT" 2>&1 | quiet > "$OUT/watermark_batch.log"
  echo "watermark rc=${PIPESTATUS[0]}" >> "$OUT/watermark_batch.log"
fi
timeout ${OPEN_S:-420} python3 benchmarks/open_loop.py --out "$OUT" --stack-dump-after $(( ${OPEN_S:-420} - 10 )) \
  ${OPEN_ARGS:---burst 128 --burst-seconds 6 --rates 16,22,26,30,34,38 --window 12 --lead-in 5} 2>&1 | quiet \
  > "$OUT/open_loop.log"
echo "open_loop rc=${PIPESTATUS[0]}" >> "$OUT/open_loop.log"
tail -4 "$OUT/watermark_batch.log" 2>/dev/null; grep -E "^  |stock|warm-up|graphs|rc=" "$OUT/open_loop.log" | tail -30
cat "$OUT/watermark_batch.md" 2>/dev/null
