"""Signing what we send an application: HMAC-SHA256 over the timestamp and the exact body.

Header ``X-Sip-Tts-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``.
The timestamp is inside the MAC so a captured request cannot be replayed later: the
application recomputes the MAC over the raw body it received, compares in constant time and
refuses a ``t`` more than a few minutes from its clock (``verify`` does exactly that; README,
"Webhook routes", shows it in a few lines for an application without this package).
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Sip-Tts-Signature"
TOLERANCE_S = 300


def mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, now: float) -> str:
    """The signature header's value for ``body`` sent at ``now`` (unix time)."""
    t = int(now)
    return f"t={t},v1={mac(secret, t, body)}"


def verify(secret: str, body: bytes, header: str, now: float, tolerance_s: float = TOLERANCE_S) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` and was made within ``tolerance_s`` of ``now``."""
    fields = dict(part.strip().partition("=")[::2] for part in header.split(","))
    try:
        t = int(fields.get("t", ""))
    except ValueError:
        return False
    if abs(now - t) > tolerance_s:
        return False
    return hmac.compare_digest(mac(secret, t, body), fields.get("v1", ""))
