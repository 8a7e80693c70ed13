#!/usr/bin/env bash
# On the GPU machine (the device tool), in one run of < 6 minutes:
#   1. verify-engine on the benchmarks' random full-size checkpoint (bfloat16, float16 HiFT,
#      block-causal reference, CUDA graphs, streaming) with --startup: the engine started as the
#      server starts it (start-up time, its checks, fall-backs)  -> verify_engine.json / .md
#   2. verify-engine on a doctored copy whose float16 vocoder overflows: must exit 1 naming
#      vocoder.dtype                                               -> verify_engine_doctored.json / .md
#   3. startup_cost.py: start-up, first audio and long-text gaps without checks/watermark and with
#      both; the watermark's cost per window and detector figures -> startup_cost.json / .md
# Everything goes under $OUT (default benchmarks/results); the lead copies it into benchmarks/results/.
#   carry: .whl (needs resemble_perth-1.0.1 among the wheels; no setuptools: engine/watermark.py
#   supplies the one pkg_resources function perth uses)     command: bash benchmarks/device_verify.sh
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
DRY=${DRY_RUN:-0}   # 1: CPU logic test (tests/test_chatterbox_verify.py): small checkpoint, few tokens
if [ "$DRY" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
PY=${PYTHON:-python3}
CKPT=${CKPT:-/tmp/chatterbox-random}
TOKENS=${VERIFY_TOKENS:-150}
SENTENCES=${VERIFY_SENTENCES:-0}
EXTRA=${VERIFY_ARGS:-}
filter() { grep -v -E "FutureWarning|deprecate\(|warnings.warn|LoRACompatible|Token -> Mel|it/s\]"; }
start=$(date +%s)

# the random checkpoint (full size unless SMALL=1), written once
$PY - <<EOF || { echo "checkpoint write failed"; exit 1; }
from pathlib import Path
from engine.chatterbox.random_checkpoint import benchmark_checkpoint, doctor_vocoder_overflow, write_random_checkpoint
root = Path("$CKPT")
if "${SMALL:-0}" == "1":
    if not (root / "conds.pt").exists():
        write_random_checkpoint(root, t3_layers=4, t3_width=256, seed=3, block_stop=True)
else:
    benchmark_checkpoint(root)
doctor_vocoder_overflow(root, Path("$CKPT-fp16-overflow"))
EOF

timeout ${VERIFY_S:-150} $PY -m sip_tts.verify_engine --model-dir "$CKPT" --max-tokens "$TOKENS" --sentences "$SENTENCES" \
  --startup --json "$OUT/verify_engine.json" --md "$OUT/verify_engine.md" $EXTRA 2>&1 | filter | tail -40
echo "verify rc=${PIPESTATUS[0]}"

timeout ${DOCTORED_S:-60} $PY -m sip_tts.verify_engine --model-dir "$CKPT-fp16-overflow" --max-tokens 60 --sentences 1 --only vocoder --no-cuda-graphs \
  --json "$OUT/verify_engine_doctored.json" --md "$OUT/verify_engine_doctored.md" $EXTRA 2>&1 | filter | tail -6
echo "doctored verify rc=${PIPESTATUS[0]} (1 expected: vocoder.dtype)"

timeout ${COST_S:-120} $PY benchmarks/startup_cost.py --model-dir "$CKPT" --out "$OUT" ${COST_ARGS:-} 2>&1 | filter | tail -20
echo "startup_cost rc=${PIPESTATUS[0]}"
echo "device_verify: $(( $(date +%s) - start )) s"
