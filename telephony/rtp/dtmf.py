"""DTMF from the caller: RFC 4733 telephone-event packets and SIP INFO bodies.

The RFC 4733 detector is sans-IO: feed it each telephone-event packet and it
returns the digits that ended. All packets of one event share its RTP
timestamp; the duration grows; the end packet (E bit) is usually sent three
times. We report a digit once, at its first end packet, and are tolerant of
senders that never set the marker bit (a new timestamp starts a new event) or
whose end packets are all lost (the event is reported when the next one starts
or ``flush`` is called after a quiet spell). Events above 15 (tones other than
0-9 * # A-D) are ignored. Durations are converted with the negotiated clock
rate (8000 or 48000).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

EVENTS = "0123456789*#ABCD"


@dataclass(frozen=True)
class DtmfDigit:
    digit: str
    duration_ms: int
    source: str  # "rfc4733" or "info"


@dataclass
class _Current:
    timestamp: int
    event: int
    duration: int
    reported: bool = False


class Rfc4733Detector:
    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self._current: _Current | None = None
        self._last_reported_ts: int | None = None

    def feed(self, timestamp: int, payload: bytes) -> list[DtmfDigit]:
        if len(payload) < 4:
            return []
        event, flags, duration = struct.unpack("!BBH", payload[:4])
        end = bool(flags & 0x80)
        out: list[DtmfDigit] = []
        cur = self._current
        if cur is None or cur.timestamp != timestamp:
            if timestamp == self._last_reported_ts:
                return []  # a late retransmitted end packet of an event already reported
            if cur is not None and not cur.reported:
                out += self._report(cur)  # its end packets were lost
            cur = self._current = _Current(timestamp, event, duration)
        cur.duration = max(cur.duration, duration)
        if end and not cur.reported:
            out += self._report(cur)
        return out

    def flush(self) -> list[DtmfDigit]:
        """Report an event whose end never came (call after a quiet spell)."""
        cur = self._current
        if cur is not None and not cur.reported:
            return self._report(cur)
        return []

    def _report(self, cur: _Current) -> list[DtmfDigit]:
        cur.reported = True
        self._last_reported_ts = cur.timestamp
        if cur.event > 15:
            return []
        return [DtmfDigit(EVENTS[cur.event], round(cur.duration * 1000 / self.clock_rate), "rfc4733")]


def parse_info(content_type: str, body: bytes) -> DtmfDigit | None:
    """SIP INFO: application/dtmf-relay ("Signal=5\\r\\nDuration=160") or application/dtmf ("5")."""
    text = body.decode("utf-8", "replace").strip()
    if content_type == "application/dtmf-relay":
        fields = {}
        for line in text.splitlines():
            name, _, value = line.partition("=")
            fields[name.strip().lower()] = value.strip()
        signal = fields.get("signal", "")
        duration = fields.get("duration", "250")
        digit = signal[:1].upper()
        if len(signal) == 1 and digit in EVENTS:
            return DtmfDigit(digit, int(duration) if duration.isdigit() else 250, "info")
        return None
    if content_type == "application/dtmf":
        if text.isdigit() and int(text) <= 15:  # some send the event number
            return DtmfDigit(EVENTS[int(text)], 250, "info")
        if len(text) == 1 and text.upper() in EVENTS:
            return DtmfDigit(text.upper(), 250, "info")
    return None
