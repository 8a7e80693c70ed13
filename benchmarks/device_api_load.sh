#!/usr/bin/env bash
# The HTTP API's overhead on the GPU machine (the device tool), one command:
#   here: bash benchmarks/device_wheels.sh          (fills .whl; httptools among them)
#   device: carry .whl, command: COMMIT=$(git rev-parse --short HEAD) bash benchmarks/device_api_load.sh
# Chatterbox (random full-size weights): N = 1, 32, 128 streams and 100 calls beside 32 API streams,
# then the burst engine (benchmarks/burst_engine.py) on the same host's CPUs, TTFB part only.
# Writes api_load_chatterbox_h200.{json,md} and api_load_burst_h200.{json,md} into $OUT.
#
# PART=front: before/after sip_tts/api/front.py in the same run (issue 16), watermark off as run 48. Export the
# tree before it next to this one first (an untracked directory travels with the tree):
#   git -C /work/main archive ddcc17c | (mkdir -p /work/main/.before && tar -x -C /work/main/.before)
#   device: PART=front COMMIT=<sha> bash benchmarks/device_api_load.sh        (carry .whl and .before)
# Chatterbox N = 1, 32, 128, each level twice per tree (the first burst of a size warms the engine up), and
# 100 calls alone and beside 32 API streams per tree: api_load_chatterbox_h200_front.{json,md} in $OUT.
#   device: PART=front_burst COMMIT=<sha> bash benchmarks/device_api_load.sh  (the same carry; a second call)
# The burst engine at 1, 32, 128 (3 rounds), both trees, on that host's CPUs: api_load_burst_h200_front.*
# TAG=<tag> names the result files instead of h200_front; COMPARE=<dir>[,<dir>] the exported trees run beside
# this one instead of .before (each staged as .before is, and carried). Issue 16's last A/B (h16b): this tree is
# main, the other 281ec9d (engine-process requests of one loop turn in one pipe write, a streamed response's
# head and first audio in one socket write):
#   git -C /work/main archive 281ec9d | (mkdir -p /work/main/.exp && tar -x -C /work/main/.exp)
#   device: PART=front COMPARE=.exp TAG=h200_h16b COMMIT=<sha> bash benchmarks/device_api_load.sh (carry .whl, .exp)
set -uo pipefail
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import httptools" || echo "httptools missing: uvicorn falls back to h11 (rebuild .whl)"
out=${OUT:-benchmarks/results}
quiet() { grep -v -E "FutureWarning|deprecate\(|warnings.warn|LoRACompatible"; }
case "${PART:-}" in
front|front_burst)
  compare=${COMPARE:-.before}
  for d in ${compare//,/ }; do
    [ -d "$d/sip_tts" ] || { echo "$d (an exported tree to compare) is missing: see the comment above"; exit 1; }
  done
  if [ "$PART" = front ]; then
    python3 benchmarks/api_load.py --engine chatterbox --modes loop --rounds 2 --streams 1,32,128 --no-watermark \
      --compare "$compare" --tag "${TAG:-h200_front}" --out "$out" 2>&1 | quiet | grep -E "N=|calls|\|"
  else
    python3 benchmarks/api_load.py --engine burst --modes loop --rounds 3 --no-calls --compare "$compare" \
      --tag "${TAG:-h200_front}" --out "$out" 2>&1 | grep -E "N=|\|"
  fi
  exit 0 ;;
esac
python3 benchmarks/api_load.py --engine chatterbox --modes loop --rounds 2 --tag h200 --out "$out" 2>&1 \
  | quiet
python3 benchmarks/api_load.py --engine burst --modes loop --no-calls --tag h200 --out "$out"
