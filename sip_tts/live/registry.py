"""The live sessions of the calls in progress, and the API's per-key WebSocket counts.

A session is made for a call the first time a step hands it to an application (``live``,
or ``connect``) and lives as long as the call's script; the HTTP routes find it here by
call id. The registry also ends calls (through the SIP server) and lists them.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Callable

from engine.base import TtsEngine, VoiceSpec
from telephony.call import CallHandle

from .session import LiveSession

try:
    from prometheus_client.core import GaugeMetricFamily
except ImportError:  # pragma: no cover (a dependency of the package)
    GaugeMetricFamily = None

if TYPE_CHECKING:
    from telephony.calls import Call


class LiveCalls:
    def __init__(self, calls: Callable[[], "dict[str, Call]"], hangup: Callable[[str, str], bool],
                 max_streams_per_key: int = 100, speech: Callable[[], object] = lambda: None,
                 gauges: dict[str, tuple[str, Callable[[], float]]] | None = None) -> None:
        self.calls = calls  # the calls in progress (the SIP server's table)
        self.end_call = hangup  # (call id, reason) -> False when there is no such call
        self.max_streams_per_key = max_streams_per_key
        self.speech = speech  # the loaded prompts (sip_tts.script.Speech): WAV prompts for /play
        self.sessions: dict[str, LiveSession] = {}
        self.streams: Counter[str] = Counter()  # open WebSockets per API key
        self.gauges = gauges or {}  # more values for /metrics (name: (help, read)): what a leak would show

    def collect(self):
        """Prometheus collector (registered on the server's registry): sessions, streams, their tasks."""
        yield GaugeMetricFamily("sip_tts_live_sessions", "calls with a live session (handed to an application)",
                                value=len(self.sessions))
        yield GaugeMetricFamily("sip_tts_live_streams", "application connections attached to calls",
                                value=sum(s.outbox is not None for s in self.sessions.values()))
        yield GaugeMetricFamily("sip_tts_live_tasks", "tasks held by live sessions (speaker, syntheses, "
                                "connections)", value=sum(s.tasks() for s in self.sessions.values()))
        for name, (text, read) in self.gauges.items():
            yield GaugeMetricFamily(name, text, value=read())

    def open(self, handle: CallHandle, engine: TtsEngine, voice: VoiceSpec,
             voices: Callable[[str], VoiceSpec]) -> LiveSession:
        call_id = handle.info.call_id
        session = self.sessions.get(call_id)
        if session is None:
            session = self.sessions[call_id] = LiveSession(
                handle, engine, voice, voices, lambda reason: self.end_call(call_id, reason) and None)
        return session

    def close(self, call_id: str) -> None:
        session = self.sessions.pop(call_id, None)
        if session is not None:
            session.close()

    def get(self, call_id: str) -> LiveSession | None:
        return self.sessions.get(call_id)

    # -- WebSockets per API key --------------------------------------------------------------
    def stream_opened(self, key: str) -> bool:
        """One more WebSocket for ``key``; False (not counted) over ``max_streams_per_key``."""
        if self.streams[key] >= self.max_streams_per_key:
            return False
        self.streams[key] += 1
        return True

    def stream_closed(self, key: str) -> None:
        self.streams[key] -= 1
        if self.streams[key] <= 0:
            del self.streams[key]
