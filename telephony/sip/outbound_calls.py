"""Many outbound calls behind one socket, and the limits that guard a trunk — sans-IO.

``OutboundCalls`` is what the server loop will hold next to the ``UserAgent``: a
message whose Call-ID it ``owns`` goes to ``receive``; its ``deadline`` joins the
loop's timer; ``messages_to_send`` and ``next_events`` are drained after each
input. Timers live in one heap keyed by call, refreshed only for the calls an
input touched, so a timer tick costs O(log n) and not a scan of every call.
Finished calls (outcome known, no transaction left) are forgotten on their own.

``place`` refuses a call *before* any INVITE exists when the server is at
``max_calls`` (inbound calls counted by the caller) or a trunk is at its
concurrent-call or calls-per-second limit; the API turns ``CallRefused`` into 429.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from .events import SessionUpdate
from .message import Message
from .outbound import Address, CallProgress, OutboundCall, OutboundConfig, Send
from .refer import TransferEvent


@dataclass(frozen=True)
class TrunkLimits:
    """0 means no limit."""

    calls_per_second: float = 0.0
    max_concurrent: int = 0


class CallRefused(Exception):
    """No INVITE was sent: ``reason`` is ``max_calls``, ``trunk_concurrent`` or ``trunk_cps`` (the I/O
    layer adds ``ports``: no RTP port free, and ``draining``: shutting down)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class OutboundCalls:
    max_calls: int = 0  # all calls, inbound included (see ``place``); 0: no cap
    calls: dict[str, OutboundCall] = field(default_factory=dict)
    _trunk_of: dict[str, str] = field(default_factory=dict)
    _starts: dict[str, deque[float]] = field(default_factory=dict)  # trunk → INVITE times in the last second
    _heap: list[tuple[float, int, str]] = field(default_factory=list)
    _seq: int = 0
    _outgoing: list[tuple[str, Send]] = field(default_factory=list)
    _events: list[CallProgress | TransferEvent | SessionUpdate] = field(default_factory=list)

    def active(self, trunk: str | None = None) -> int:
        """Calls without an outcome yet (on ``trunk``, if given)."""
        return sum(1 for cid, call in self.calls.items()
                   if call.outcome is None and (trunk is None or self._trunk_of.get(cid) == trunk))

    def place(self, config: OutboundConfig, now: float, trunk: str = "", limits: TrunkLimits | None = None,
              inbound_active: int = 0) -> OutboundCall:
        """Start a call (its INVITE is queued at once) or raise ``CallRefused`` without sending anything."""
        if self.max_calls > 0 and self.active() + inbound_active >= self.max_calls:
            raise CallRefused("max_calls", f"at max_calls ({self.max_calls})")
        if limits is not None:
            if limits.max_concurrent > 0 and self.active(trunk) >= limits.max_concurrent:
                raise CallRefused("trunk_concurrent", f"trunk {trunk!r} at {limits.max_concurrent} concurrent calls")
            if limits.calls_per_second > 0:
                window = self._starts.setdefault(trunk, deque())
                while window and window[0] <= now - 1.0:
                    window.popleft()
                if len(window) >= limits.calls_per_second:
                    raise CallRefused("trunk_cps", f"trunk {trunk!r} at {limits.calls_per_second:g} calls/s")
                window.append(now)
        if config.call_id in self.calls:
            raise ValueError(f"call_id: {config.call_id!r} is already in use")
        call = OutboundCall(config)
        self.calls[config.call_id] = call
        self._trunk_of[config.call_id] = trunk
        call.start(now)
        self._touched(call)
        return call

    def owns(self, call_id: str) -> bool:
        return call_id in self.calls

    def receive(self, msg: Message, now: float, source: Address | None = None) -> None:
        call = self.calls.get(msg.call_id)
        if call is not None:
            call.receive(msg, now, source)
            self._touched(call)

    def receive_datagram(self, call_id: str, data: bytes, now: float, source: Address | None = None) -> bool:
        """Bytes the I/O layer found ``call_id`` in (a cheap look, before parsing): False if not ours."""
        call = self.calls.get(call_id)
        if call is None:
            return False
        call.receive_datagram(data, now, source)
        self._touched(call)
        return True

    def transport_error(self, call_id: str, now: float) -> None:
        """A request of the call could not be sent (no route, connection refused)."""
        call = self.calls.get(call_id)
        if call is not None:
            call.transport_error(now)
            self._touched(call)

    def hangup(self, call_id: str, now: float) -> None:
        call = self.calls.get(call_id)
        if call is not None:
            call.hangup(now)
            self._touched(call)

    def transfer(self, call_id: str, refer_to: str, now: float, timeout_s: float = 30.0) -> None:
        call = self.calls.get(call_id)
        if call is None:
            raise KeyError(call_id)
        call.transfer(refer_to, now, timeout_s)
        self._touched(call)

    def answer_update(self, call_id: str, sdp: bytes | None, now: float, status: int = 200) -> None:
        """Answer the call's open re-INVITE/UPDATE (``SessionUpdate``): 200 with ``sdp``, or ``status``."""
        call = self.calls.get(call_id)
        if call is not None:
            call.answer_update(sdp, now, status)
            self._touched(call)

    def deadline(self) -> float | None:
        heap = self._heap
        while heap:
            when, _, call_id = heap[0]
            call = self.calls.get(call_id)
            if call is not None and call.deadline() == when:
                return when
            heapq.heappop(heap)  # stale entry: the call moved on or is gone
        return None

    def handle_timer(self, now: float) -> None:
        due: list[OutboundCall] = []
        while self._heap and self._heap[0][0] <= now:
            _, _, call_id = heapq.heappop(self._heap)
            call = self.calls.get(call_id)
            if call is not None and call not in due:
                due.append(call)
        for call in due:
            call.handle_timer(now)
            self._touched(call)

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    def messages_to_send(self) -> list[Send]:
        out, self._outgoing = [s for _, s in self._outgoing], []
        return out

    def next_events(self) -> list[CallProgress | TransferEvent | SessionUpdate]:
        events, self._events = self._events, []
        return events

    def _touched(self, call: OutboundCall) -> None:
        """Collect what the call produced, re-arm its timer, forget it once finished."""
        self._outgoing.extend((call.call_id, s) for s in call.messages_to_send())
        self._events.extend(call.next_events())
        if call.finished:
            self.calls.pop(call.call_id, None)
            self._trunk_of.pop(call.call_id, None)
            return
        when = call.deadline()
        if when is not None:
            self._seq += 1
            heapq.heappush(self._heap, (when, self._seq, call.call_id))
