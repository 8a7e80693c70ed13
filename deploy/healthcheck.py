"""Container HEALTHCHECK: exit 0 when sip-tts's /health answers 200 (ready), 1 otherwise.

The URL comes from SIP_TTS_HEALTH_URL (the image sets it to the metrics listener of
deploy/server.yaml); only the standard library, so the check costs no dependency.
"""

import os
import sys
import urllib.error
import urllib.request

URL = os.environ.get("SIP_TTS_HEALTH_URL", "http://127.0.0.1:9100/health")

try:
    with urllib.request.urlopen(URL, timeout=2) as r:
        print(r.read().decode(errors="replace").strip())
        sys.exit(0 if r.status == 200 else 1)
except urllib.error.HTTPError as exc:  # 503: draining, full or engine down
    print(exc.read().decode(errors="replace").strip() or exc)
    sys.exit(1)
except OSError as exc:
    print(f"{URL}: {exc}")
    sys.exit(1)
