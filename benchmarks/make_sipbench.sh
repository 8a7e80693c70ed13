#!/usr/bin/env bash
# Fill .sipbench/ for benchmarks/device_sip_load.sh: this machine's sipp and tcpdump with every
# library they load (run through the bundled loader, so the GPU image's own libraries do not
# matter), SIPp's prompt.ulaw, and the server's wheels taken from .whl (benchmarks/device_wheels.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd); D=$ROOT/.sipbench
rm -rf "$D"; mkdir -p "$D/lib" "$D/bin" "$D/whl"
for b in sipp tcpdump; do
  p=$(command -v $b); cp "$p" "$D/lib/$b.bin"
  for l in $(ldd "$p" | awk '/=>/{print $3} /ld-linux/{print $1}'); do cp -L "$l" "$D/lib/"; done
  extra=""; [ $b = tcpdump ] && extra="-Z root"  # that image has no tcpdump user to drop to
  printf '#!/bin/sh\nD=$(cd "$(dirname "$0")/.." && pwd)\nexec "$D/lib/ld-linux-x86-64.so.2" --library-path "$D/lib" "$D/lib/%s.bin" %s "$@"\n' $b "$extra" > "$D/bin/$b"
  chmod +x "$D/bin/$b"
done
[ -f "$ROOT/sip_tests/peers/sipp/prompt.ulaw" ] || bash "$ROOT/sip_tests/peers/sipp/make_prompt.sh"
cp "$ROOT/sip_tests/peers/sipp/prompt.ulaw" "$D/"
[ -d "$ROOT/.whl" ] || bash "$ROOT/benchmarks/device_wheels.sh"
for w in annotated_doc annotated_types espeakng_loader fastapi opentelemetry_api importlib_metadata pydantic- \
         pydantic_core pylibsrtp python_multipart soundfile soxr starlette structlog typing_inspection uvicorn cffi pycparser websockets; do
  cp "$ROOT"/.whl/${w}*.whl "$D/whl/"
done
du -sh "$D"
