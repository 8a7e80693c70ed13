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
# TAG=<tag> names the result files instead of h200_front (e.g. TAG=h200_h16b for a later before/after: export
# main's tree, or the commit before the change, as .before the same way).
set -uo pipefail
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import httptools" || echo "httptools missing: uvicorn falls back to h11 (rebuild .whl)"
out=${OUT:-benchmarks/results}
quiet() { grep -v -E "FutureWarning|deprecate\(|warnings.warn|LoRACompatible"; }
case "${PART:-}" in
front|front_burst)
  [ -d .before/sip_tts ] || { echo ".before (the tree before front.py) is missing: see the comment above"; exit 1; }
  if [ "$PART" = front ]; then
    python3 benchmarks/api_load.py --engine chatterbox --modes loop --rounds 2 --streams 1,32,128 --no-watermark \
      --compare .before --tag "${TAG:-h200_front}" --out "$out" 2>&1 | quiet | grep -E "N=|calls|\|"
  else
    python3 benchmarks/api_load.py --engine burst --modes loop --rounds 3 --no-calls --compare .before \
      --tag "${TAG:-h200_front}" --out "$out" 2>&1 | grep -E "N=|\|"
  fi
  exit 0 ;;
esac
python3 benchmarks/api_load.py --engine chatterbox --modes loop --rounds 2 --tag h200 --out "$out" 2>&1 \
  | quiet
python3 benchmarks/api_load.py --engine burst --modes loop --no-calls --tag h200 --out "$out"
