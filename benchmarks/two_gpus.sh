#!/usr/bin/env bash
# Two instances, one per GPU, behind Kamailio: the whole measurement in one command on a
# two-GPU machine (the device tool's nvidia-h200-x2), from the repository root:
#   WHEELS=.whl DEBS=debs bash benchmarks/two_gpus.sh [two_gpus.py args...]
# WHEELS: the folder benchmarks/device_wheels.sh fills (installed into /tmp/site when present).
# DEBS: where `apt-get download kamailio` put its .deb, used only when kamailio is not installed
# (unpacked with dpkg -x into /tmp/kam; its libraries and modules are found by path).
# Results (two_gpus.json/.md), the console log and a tarball of the instances' and Kamailio's
# logs go to $OUT (default benchmarks/results, logs to /tmp).
set -uo pipefail
OUT=${OUT:-benchmarks/results}
LOGS=${LOGS:-${OUT}}
mkdir -p "$OUT" "$LOGS"
WHEELS=${WHEELS:-.whl}
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
if ! command -v kamailio >/dev/null; then
  rm -rf /tmp/kam && mkdir -p /tmp/kam
  for f in "${DEBS:-debs}"/*.deb; do dpkg -x "$f" /tmp/kam || exit 1; done
  lib=/tmp/kam/usr/lib/x86_64-linux-gnu/kamailio
  export KAMAILIO=/tmp/kam/usr/sbin/kamailio KAMAILIO_MODULES=$lib/modules LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
PY=${PY:-python3}
[ -f COMMIT ] && export GIT_COMMIT=$(cat COMMIT)   # a staged copy has no .git
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null
"${KAMAILIO:-kamailio}" -v | head -1
timeout "${TWO_GPUS_S:-540}" "$PY" benchmarks/two_gpus.py --out "$OUT" --logs /tmp/two_gpus_logs "$@" 2>&1 \
  | grep --line-buffered -v -E "FutureWarning|deprecate\(|warnings.warn|LoRACompatible" | tee "$LOGS/two_gpus.log"
rc=${PIPESTATUS[0]}
echo "two_gpus rc=$rc" | tee -a "$LOGS/two_gpus.log"
tar czf "$LOGS/two_gpus_logs.tgz" -C /tmp two_gpus_logs 2>/dev/null
exit "$rc"
