#!/usr/bin/env bash
# On the GPU machine (device tool): benchmarks/agent_latency.py with Chatterbox (random full-size
# weights), this tree ("after") and, when .old17 is carried, an older tree ("before") beside it in
# the same run (rounds alternated: same GPU, same warm-up). Results (JSON, table) and the log in $OUT.
#   carry: [".whl", ".old17"]   command: COMMIT=<sha> bash benchmarks/device_agent_latency.sh
# .whl: bash benchmarks/device_wheels.sh; .old17 (untracked, travels with the tree): mkdir .old17 && git archive <sha before> | tar -x -C .old17
# About 5-6 min on an H200: two servers start (random full-size checkpoint), N=1 20 rounds a side, 32 and 128 two.
# ARGS replaces the levels below; OLD names another tree to compare (OLD= : none).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
OLD=${OLD-.old17}
COMPARE=()
[ -n "$OLD" ] && [ -d "$OLD" ] && COMPARE=(--compare "$OLD")
timeout ${BENCH_S:-560} python3 benchmarks/agent_latency.py --engine chatterbox --tag h200 \
  ${ARGS:---calls 1,32,128 --rounds 2 --min-utterances 20 --stream-s 15} "${COMPARE[@]}" --out "$OUT" 2>&1 \
  | grep -v -E "FutureWarning|deprecate\(|warnings.warn|LoRACompatible|Token -> Mel|it/s\]|pkg_resources" > "$OUT/agent_latency.log"
echo "agent_latency rc=${PIPESTATUS[0]}" >> "$OUT/agent_latency.log"
tail -40 "$OUT/agent_latency.log"
