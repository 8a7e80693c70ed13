#!/usr/bin/env bash
# Fill a folder (default: .whl in the repository root) with the cp312 manylinux wheels that the
# GPU machine's image lacks, one version each, for the device tool to carry (`carry: .whl`).
# The image already has torch 2.11 (cu130), transformers, numpy, safetensors, tokenizers,
# einops, huggingface-hub, PyYAML, prometheus-client, numba, scipy... (device README, KINDS.md);
# this list is what `pip list` here has and that image has not, minus what the server never imports.
#   bash benchmarks/device_wheels.sh [DIR]
# On the GPU machine: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
#   --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$ROOT/.whl}
PY=${PY:-python3}
WHEELS=(
  # the server
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  structlog==26.1.0 soxr==1.1.0 espeakng-loader==0.2.4
  # the HTTP API (the image has anyio, h11, click, httpx)
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 python-multipart==0.0.34 annotated-doc==0.0.7
  httptools==0.9.0
  # live calls: the per-call WebSocket (uvicorn serves it through websockets; the connect step dials with it)
  websockets==17.4
  # SRTP (the server imports it)
  pylibsrtp==1.0.0
  # fastapi imports opentelemetry-api
  opentelemetry-api==1.45.2
  # the Chatterbox engine (chatterbox-tts and friends are used without their own pins)
  chatterbox-tts==0.1.7 s3tokenizer==0.3.0 resemble-perth==1.0.1 conformer==0.3.2 diffusers==0.29.0
  omegaconf==2.4.0 pyloudnorm==0.2.0 importlib_metadata==10.2.0
  librosa==0.11.0 audioread==3.1.0 decorator==5.3.1 pooch==1.9.0 platformdirs==4.14.9
  soundfile==0.14.0 cffi==2.1.1 pycparser==3.12
)
mkdir -p "$DIR"
for spec in "${WHEELS[@]}"; do
  name=${spec%%==*}
  stem=$(echo "$name" | tr 'A-Z-' 'a-z_')
  if ls "$DIR" | tr 'A-Z' 'a-z' | grep -q "^${stem}-${spec##*==}-"; then continue; fi
  # one version each: drop another version of the same package (two stop the whole install)
  find "$DIR" -maxdepth 1 -iname "${stem}-*.whl" -delete
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DIR" "$spec"
done
# resemble-perth carries its 37 MB watermark network: the Chatterbox engine watermarks by default
# (watermark: true), so the wheel travels whole (about 58 MB of wheels of the 64 MiB carried).
ls -la "$DIR"; du -sh "$DIR"
