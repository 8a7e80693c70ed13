"""SIP transactions over an unreliable transport (RFC 3261 §17, RFC 6026).

Each transaction is a small state machine written as a table
``{state: {input: handler}}``: every state change lives in the tables below.
Time is an input (``now``) and timers are outputs (``deadline()``), so the
machines run without sockets or sleeps. A handler returns what the transaction
user must learn (``TuEvent``); bytes to send are appended to ``outbox``.

The INVITE server transaction also owns the retransmission of our 2xx until the
ACK arrives (the "Accepted" state of RFC 6026 with the UAS core's Timer G
behaviour of §13.3.1.4): a call that never sees its ACK within 64*T1 is
reported as ``ACK_TIMEOUT`` so the call can be torn down. After the ACK it stays
in Accepted for Timer L (64*T1) to absorb late INVITE and ACK retransmissions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, ClassVar

T1 = 0.5
T2 = 4.0
T4 = 5.0


class TuEvent(enum.Enum):
    """What a transaction tells its user."""

    ACK_RECEIVED = "ack"  # the ACK for our final response arrived
    ACK_TIMEOUT = "ack-timeout"  # 64*T1 passed without an ACK
    TIMEOUT = "timeout"  # client transaction: no final response (Timer F)
    TERMINATED = "terminated"  # the transaction can be forgotten


class Input(enum.Enum):
    REQUEST = "request"  # a retransmission of the request
    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    FAILURE = "3xx-6xx"
    ACK = "ack"
    TIMER_G = "G"  # final response retransmit
    TIMER_H = "H"  # wait for ACK
    TIMER_I = "I"  # absorb ACK retransmissions
    TIMER_J = "J"  # absorb request retransmissions (non-INVITE)
    TIMER_E = "E"  # client request retransmit
    TIMER_F = "F"  # client transaction timeout
    TIMER_K = "K"  # client: absorb response retransmissions
    TIMER_L = "L"  # accepted INVITE: absorb INVITE/ACK retransmissions after the ACK (RFC 6026)


class State(enum.Enum):
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


Handler = Callable[["_Transaction", float, "bytes | None"], list[TuEvent]]


@dataclass
class _Transaction:
    """Shared machinery: timers, the last response sent, and the outbox."""

    key: str
    state: State = State.PROCEEDING
    outbox: list[bytes] = field(default_factory=list)
    timers: dict[Input, float] = field(default_factory=dict)
    last_response: bytes | None = None
    retransmit_interval: float = T1
    reliable: bool = False  # TCP/TLS: no retransmission of non-2xx, Timers I and J are 0 (§17.2)

    TABLE: ClassVar[dict[State, dict[Input, Handler]]] = {}

    def handle(self, event: Input, now: float, data: bytes | None = None) -> list[TuEvent]:
        handler = self.TABLE.get(self.state, {}).get(event)
        if handler is None:
            return []  # not meaningful in this state: absorbed
        return handler(self, now, data)

    def deadline(self) -> float | None:
        return min(self.timers.values()) if self.timers else None

    def handle_timers(self, now: float) -> list[TuEvent]:
        events: list[TuEvent] = []
        for name, when in sorted(self.timers.items(), key=lambda kv: kv[1]):
            if when <= now and self.timers.get(name) == when:
                del self.timers[name]
                events.extend(self.handle(name, now))
        return events

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    # -- shared actions -------------------------------------------------------------
    def _send(self, data: bytes | None) -> None:
        if data is not None:
            self.outbox.append(data)

    def _resend_last(self, now: float, data: bytes | None) -> list[TuEvent]:
        self._send(self.last_response)
        return []

    def _terminate(self, *events: TuEvent) -> list[TuEvent]:
        self.state = State.TERMINATED
        self.timers.clear()
        return [*events, TuEvent.TERMINATED]


class InviteServerTransaction(_Transaction):
    """INVITE server transaction; 2xx retransmission until ACK included."""

    def _provisional(self, now: float, data: bytes | None) -> list[TuEvent]:
        self.last_response = data
        self._send(data)
        return []

    def _final(self, now: float, data: bytes | None, state: State) -> list[TuEvent]:
        self.last_response = data
        self._send(data)
        self.state = state
        self.retransmit_interval = T1
        # A 2xx is retransmitted over any transport (§13.3.1.4: it must cross proxies end to end),
        # a non-2xx only over an unreliable one (§17.2.1, Timer G).
        if state is State.ACCEPTED or not self.reliable:
            self.timers[Input.TIMER_G] = now + T1
        self.timers[Input.TIMER_H] = now + 64 * T1
        return []

    def _success(self, now: float, data: bytes | None) -> list[TuEvent]:
        return self._final(now, data, State.ACCEPTED)

    def _failure(self, now: float, data: bytes | None) -> list[TuEvent]:
        return self._final(now, data, State.COMPLETED)

    def _timer_g(self, now: float, data: bytes | None) -> list[TuEvent]:
        self._send(self.last_response)
        self.retransmit_interval = min(2 * self.retransmit_interval, T2)
        self.timers[Input.TIMER_G] = now + self.retransmit_interval
        return []

    def _accepted_ack(self, now: float, data: bytes | None) -> list[TuEvent]:
        # Stop retransmitting, but stay a while (Timer L) so a late INVITE retransmission
        # is answered with the 2xx again instead of looking like a new request.
        if Input.TIMER_L in self.timers:
            return []  # a retransmitted ACK
        self.timers.clear()
        self.timers[Input.TIMER_L] = now + 64 * T1
        return [TuEvent.ACK_RECEIVED]

    def _accepted_done(self, now: float, data: bytes | None) -> list[TuEvent]:
        return self._terminate()

    def _accepted_timeout(self, now: float, data: bytes | None) -> list[TuEvent]:
        return self._terminate(TuEvent.ACK_TIMEOUT)

    def _completed_ack(self, now: float, data: bytes | None) -> list[TuEvent]:
        self.state = State.CONFIRMED
        self.timers.clear()
        self.timers[Input.TIMER_I] = now + (0.0 if self.reliable else T4)
        return [TuEvent.ACK_RECEIVED]

    def _confirmed_done(self, now: float, data: bytes | None) -> list[TuEvent]:
        return self._terminate()

    TABLE = {  # type: ignore[assignment]
        State.PROCEEDING: {
            Input.REQUEST: _Transaction._resend_last,
            Input.PROVISIONAL: _provisional,
            Input.SUCCESS: _success,
            Input.FAILURE: _failure,
        },
        State.ACCEPTED: {
            Input.REQUEST: _Transaction._resend_last,
            Input.TIMER_G: _timer_g,
            Input.ACK: _accepted_ack,
            Input.TIMER_H: _accepted_timeout,
            Input.TIMER_L: _accepted_done,
        },
        State.COMPLETED: {
            Input.REQUEST: _Transaction._resend_last,
            Input.TIMER_G: _timer_g,
            Input.ACK: _completed_ack,
            Input.TIMER_H: _accepted_timeout,
        },
        State.CONFIRMED: {
            Input.TIMER_I: _confirmed_done,
        },
    }


class NonInviteServerTransaction(_Transaction):
    """BYE, CANCEL, OPTIONS ... : answer once, replay the answer to retransmissions."""

    def __post_init__(self) -> None:
        self.state = State.TRYING

    def _provisional(self, now: float, data: bytes | None) -> list[TuEvent]:
        self.last_response = data
        self._send(data)
        self.state = State.PROCEEDING
        return []

    def _final(self, now: float, data: bytes | None) -> list[TuEvent]:
        self.last_response = data
        self._send(data)
        self.state = State.COMPLETED
        self.timers[Input.TIMER_J] = now + (0.0 if self.reliable else 64 * T1)
        return []

    def _done(self, now: float, data: bytes | None) -> list[TuEvent]:
        return self._terminate()

    TABLE = {  # type: ignore[assignment]
        State.TRYING: {
            Input.PROVISIONAL: _provisional,
            Input.SUCCESS: _final,
            Input.FAILURE: _final,
        },
        State.PROCEEDING: {
            Input.REQUEST: _Transaction._resend_last,
            Input.PROVISIONAL: _provisional,
            Input.SUCCESS: _final,
            Input.FAILURE: _final,
        },
        State.COMPLETED: {
            Input.REQUEST: _Transaction._resend_last,
            Input.TIMER_J: _done,
        },
    }


class NonInviteClientTransaction(_Transaction):
    """A request we send (BYE): retransmit on Timer E until a response, give up at Timer F."""

    request: bytes = b""

    @classmethod
    def start(cls, key: str, request: bytes, now: float, reliable: bool = False) -> "NonInviteClientTransaction":
        """Send ``request``; over a reliable transport there is no Timer E (§17.1.2.2)."""
        tx = cls(key=key)
        tx.state = State.TRYING
        tx.request = request
        tx.outbox.append(request)
        if not reliable:
            tx.timers[Input.TIMER_E] = now + T1
        tx.timers[Input.TIMER_F] = now + 64 * T1
        return tx

    def _timer_e(self, now: float, data: bytes | None) -> list[TuEvent]:
        self._send(self.request)
        self.retransmit_interval = min(2 * self.retransmit_interval, T2)
        self.timers[Input.TIMER_E] = now + self.retransmit_interval
        return []

    def _provisional(self, now: float, data: bytes | None) -> list[TuEvent]:
        self.state = State.PROCEEDING
        self.retransmit_interval = T2
        return []

    def _final(self, now: float, data: bytes | None) -> list[TuEvent]:
        self.state = State.COMPLETED
        self.timers.clear()
        self.timers[Input.TIMER_K] = now + T4
        return []

    def _timeout(self, now: float, data: bytes | None) -> list[TuEvent]:
        return self._terminate(TuEvent.TIMEOUT)

    def _done(self, now: float, data: bytes | None) -> list[TuEvent]:
        return self._terminate()

    TABLE = {  # type: ignore[assignment]
        State.TRYING: {
            Input.TIMER_E: _timer_e,
            Input.TIMER_F: _timeout,
            Input.PROVISIONAL: _provisional,
            Input.SUCCESS: _final,
            Input.FAILURE: _final,
        },
        State.PROCEEDING: {
            Input.TIMER_E: _timer_e,
            Input.TIMER_F: _timeout,
            Input.PROVISIONAL: _provisional,
            Input.SUCCESS: _final,
            Input.FAILURE: _final,
        },
        State.COMPLETED: {
            Input.TIMER_K: _done,
        },
    }


def response_input(status: int) -> Input:
    if status < 200:
        return Input.PROVISIONAL
    if status < 300:
        return Input.SUCCESS
    return Input.FAILURE
