#!/usr/bin/env bash
# Run 48 (engine_notes.md): is the burst first-audio regression between 87785a1 and main gone?
# One command on the GPU machine (the device tool), carrying .whl and .old87 (87785a1 exported):
#   PART=a COMMIT=<sha> bash benchmarks/device_regression.sh   # sampler in a CUDA graph, split cost, main vs 87785a1
#   PART=b COMMIT=<sha> bash benchmarks/device_regression.sh   # each level twice (a first burst's warm-up), then
#                                                                one utterance per request (--max-tokens 750)
#   PART=c COMMIT=<sha> bash benchmarks/device_regression.sh   # run 49: first burst vs later ones inside one engine
# Results (json + md) go to $OUT.
set -uo pipefail
source benchmarks/device_env.sh
out=${OUT:-benchmarks/results}
quiet() { grep -v -E "FutureWarning|deprecate\(|warnings.warn|LoRACompatible"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
case "${PART:-a}" in
a)
  python3 benchmarks/sampling_step.py --tag h200 --rounds 5 --out "$out" 2>&1 | quiet | tail -15
  python3 benchmarks/split_cost.py --tag h200 --out "$out" 2>&1 | quiet | tail -12
  python3 benchmarks/api_load.py --engine chatterbox --modes loop --rounds 1 --streams 32,128 --no-watermark \
    --no-calls --compare .old87 --tag h200_vs87 --out "$out" 2>&1 | quiet | grep -E "N=|\|" ;;
b)
  python3 benchmarks/api_load.py --engine chatterbox --modes loop --rounds 1 --streams 32,32,128,128 --no-watermark \
    --no-calls --compare .old87 --tag h200_warm --out "$out" 2>&1 | quiet | grep -E "N=|\|"
  python3 benchmarks/api_load.py --engine chatterbox --modes loop --rounds 1 --streams 32,128 --no-watermark \
    --no-calls --max-tokens 750 --compare .old87 --tag h200_750 --out "$out" 2>&1 | quiet | grep -E "N=|\|" ;;
c)
  python3 benchmarks/first_burst.py --bursts 3 --tag h200 --out "$out" 2>&1 | quiet | tail -12 ;;
esac
