#!/usr/bin/env bash
# On the GPU machine: engine benchmark, then the end-to-end SIP load, logs and results into $OUT.
#   carry: .whl   command: bash benchmarks/device_all.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
timeout ${BENCH_S:-400} bash benchmarks/device_run.sh --stack-dump-after $(( ${BENCH_S:-400} - 15 )) ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
echo "bench rc=$?" >> "$OUT/bench.log"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
timeout ${E2E_S:-150} python3 benchmarks/e2e_load.py --out "$OUT" ${E2E_ARGS:-} > "$OUT/e2e.log" 2>&1
echo "e2e rc=$?" >> "$OUT/e2e.log"
grep -v "Token -> Mel\|it/s\]" "$OUT/bench.log" | tail -40; tail -8 "$OUT/e2e.log"
