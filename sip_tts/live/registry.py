"""The live sessions of the calls in progress, and the API's per-key WebSocket counts.

A session is made for a call the first time a step hands it to an application (``live``,
or ``connect``) and lives as long as the call's script; the HTTP routes find it here by
call id. The registry also ends calls (through the SIP server) and lists them.

A call we placed reports its progress here too (``progress``: ringing, answered, an outcome):
to its session when it has one, else kept until it has one or the call is over (a placed call's
script starts when the INVITE goes out, so its session is normally there within a loop turn).
A run made again for another codec at the answer takes the session over (``open``/``close``
with ``owner``: the application stays attached). ``expect`` marks a
placed call whose first step hands it to an application, so that a WebSocket opened right after
``POST /v1/calls`` waits for that session (``session_soon``) instead of being refused. Such a
call that fails before any application attached (a busy signal can come back within
milliseconds, a refused TCP trunk at once) leaves its events for ``OUTCOME_KEEP_S``: a stream
opened then still gets them (``outcome_of``), then ``ended``, and is closed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING, Callable

from engine.base import TtsEngine, VoiceSpec
from telephony.call import CallHandle

from .caller_audio import FORMATS
from .protocol import event
from .session import LiveSession

try:
    from prometheus_client.core import GaugeMetricFamily
except ImportError:  # pragma: no cover (a dependency of the package)
    GaugeMetricFamily = None

OUTCOME_KEEP_S = 10.0  # a placed call's outcome waits this long for a stream opened after it

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
        self._early: dict[str, list[tuple[str, dict]]] = {}  # placed calls' progress before their session
        self._expected: dict[str, asyncio.Event] = {}  # placed calls whose first step is live/connect
        self._outcomes: dict[str, tuple[float, list[str]]] = {}  # call id: (kept until, events) (outcome_of)

    def collect(self):
        """Prometheus collector (registered on the server's registry): sessions, streams, their tasks."""
        yield GaugeMetricFamily("sip_tts_live_sessions", "calls with a live session (handed to an application)",
                                value=len(self.sessions))
        yield GaugeMetricFamily("sip_tts_live_streams", "application connections attached to calls",
                                value=sum(s.outbox is not None for s in self.sessions.values()))
        yield GaugeMetricFamily("sip_tts_live_tasks", "tasks held by live sessions (speaker, syntheses, "
                                "connections)", value=sum(s.tasks() for s in self.sessions.values()))
        yield GaugeMetricFamily("sip_tts_live_placed_pending", "placed calls whose progress waits for a session, "
                                "or which a session is expected for", value=len(self._early.keys() | self._expected))
        self._prune()
        yield GaugeMetricFamily("sip_tts_live_outcomes_kept", f"placed calls' outcomes kept {OUTCOME_KEEP_S:g} s "
                                "for a stream opened after them", value=len(self._outcomes))
        for name, (text, read) in self.gauges.items():
            yield GaugeMetricFamily(name, text, value=read())

    def open(self, handle: CallHandle, engine: TtsEngine, voice: VoiceSpec,
             voices: Callable[[str], VoiceSpec], owner: object = None) -> LiveSession:
        """The call's session (made now, or the one it has). ``owner``: the script run asking; a new
        run with a new handle (the call's audio made again in another codec at the answer) takes
        the session over, the application attached to it stays."""
        call_id = handle.info.call_id
        session = self.sessions.get(call_id)
        if session is not None and session.handle is not handle:
            session.rebind(handle)
        if session is not None:
            session.owner = owner
        if session is None:
            session = self.sessions[call_id] = LiveSession(
                handle, engine, voice, voices, lambda reason: self.end_call(call_id, reason) and None)
            session.owner = owner
            for kind, fields in self._early.pop(call_id, []):
                session.notify(kind, **fields)
            expected = self._expected.pop(call_id, None)
            if expected is not None:
                expected.set()
        return session

    def close(self, call_id: str, owner: object = None) -> None:
        """``owner``'s script is over. While the call is up, a session another run has taken over,
        or whose call's audio is being made again (that run takes it over next), stays."""
        session = self.sessions.get(call_id)
        if session is None:
            return
        if owner is not None:
            call = self.calls().get(call_id)
            if call is not None and not call.ended and (session.owner is not owner or call.queue is not session.queue):
                return
        del self.sessions[call_id]
        session.close()

    def get(self, call_id: str) -> LiveSession | None:
        return self.sessions.get(call_id)

    # -- placed calls -------------------------------------------------------------------------
    def expect(self, call_id: str) -> None:
        """A placed call whose script begins by handing it to an application."""
        self._expected[call_id] = asyncio.Event()

    async def session_soon(self, call_id: str, timeout: float = 2.0) -> LiveSession | None:
        """The call's session; for an expected one not made yet, waits for it (up to ``timeout``)."""
        session = self.sessions.get(call_id)
        expected = self._expected.get(call_id)
        if session is None and expected is not None:
            try:
                await asyncio.wait_for(expected.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            session = self.sessions.get(call_id)
        return session

    def progress(self, call_id: str, kind: str, **fields: object) -> None:
        """A step of a placed call: to its session, or kept for the session to come."""
        session = self.sessions.get(call_id)
        if session is not None:
            session.notify(kind, **fields)
        else:
            self._early.setdefault(call_id, []).append((kind, fields))

    def placed_over(self, call_id: str, outcome: str | None = None) -> None:
        """A placed call has its outcome (or has ended): nothing more is kept for it, and a stream
        waiting for its session stops waiting. ``outcome``: it ended before the answer; a call
        that was to be streamed and has no application attached keeps its events a while."""
        early = self._early.pop(call_id, [])
        expected = self._expected.pop(call_id, None)
        if expected is not None:
            expected.set()
        session = self.sessions.get(call_id)
        if outcome is None or (expected is None and session is None) or (session and session.outbox is not None):
            return
        call = self.calls().get(call_id)
        info = call.info if call is not None else None
        events = [event("start", call_id=call_id, caller=info.caller if info else "", dialed=info.dialed if info
                        else "", codec=info.codec if info else None, audio_formats=list(FORMATS))]
        events += session.progress if session is not None else [event(kind, **fields) for kind, fields in early]
        events.append(event("ended", reason=outcome, utterances=session.utterances if session else 0,
                            audio_frames_dropped=0, caller_frames_lost=0))
        self._prune()
        self._outcomes[call_id] = (time.monotonic() + OUTCOME_KEEP_S, events)

    def _prune(self) -> None:
        """Forget the outcomes kept past their time (in the order they came: the oldest first)."""
        now = time.monotonic()
        while self._outcomes:
            first = next(iter(self._outcomes))
            if self._outcomes[first][0] > now:
                break
            del self._outcomes[first]

    def outcome_of(self, call_id: str) -> list[str] | None:
        """The events of a placed call that failed before any application attached (a stream
        opened within ``OUTCOME_KEEP_S`` of it gets them, then the close); None: none kept."""
        kept = self._outcomes.pop(call_id, None)
        return kept[1] if kept is not None and kept[0] > time.monotonic() else None

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
