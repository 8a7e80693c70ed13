"""The INVITE client transaction (RFC 3261 §17.1.1, with the Accepted state of RFC 6026).

Written in the table style of :mod:`.transaction`: ``{state: {input: handler}}``,
time in as ``now``, timers out as ``deadline()``. The states map onto the shared
``State`` enum as: Calling = ``TRYING``, Proceeding, Accepted, Completed, Terminated.

What it owns, and why:

* Timer A retransmits the INVITE over UDP (T1, doubling without the T2 cap that
  non-INVITE requests have); Timer B (64*T1) gives up while still Calling. Over a
  reliable transport there is no Timer A (§17.1.1.2) and Timer D is zero.
* A 3xx-6xx is ACKed here, by the transaction (§17.1.1.3), and that ACK is
  replayed to each retransmission of the response until Timer D ends Completed.
* A 2xx is passed up and the transaction moves to Accepted for Timer M (64*T1):
  the ACK for a 2xx belongs to the UAC core (§13.2.2.4), which must see the 2xx
  retransmissions to re-ACK them (RFC 6026 §7.2).

``on_response`` answers whether the response is for the transaction user
(``ClientEvent.RESPONSE``) or was absorbed (a retransmitted final response).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar

from .message import Headers, Request, Response
from .transaction import T1, Input, State, TuEvent, _Transaction, response_input


class Timer(enum.Enum):
    """The INVITE client's timers (the shared ``Input`` enum has the server and non-INVITE ones)."""

    A = "A"  # INVITE retransmit (UDP only)
    B = "B"  # give up while Calling
    D = "D"  # Completed: absorb final response retransmissions
    M = "M"  # Accepted: let 2xx retransmissions through to the TU (RFC 6026)


class ClientEvent(enum.Enum):
    """What the INVITE client transaction hands its user besides ``TuEvent``."""

    RESPONSE = "response"  # pass this response to the TU
    TRANSPORT_ERROR = "transport-error"  # the transport could not deliver the request


def ack_for_failure(invite: Request, response: Response) -> Request:
    """The ACK of a 3xx-6xx (§17.1.1.3): the INVITE's Request-URI, top Via, Call-ID, From and
    Route, the response's To (with its tag), the INVITE's CSeq number with method ACK."""
    headers = Headers()
    vias = invite.headers.get_all("Via")
    if vias:
        headers.add("Via", vias[0])
    headers.add("Max-Forwards", "70")
    for route in invite.headers.get_all("Route"):
        headers.add("Route", route)
    headers.add("From", invite.headers.get("From") or "")
    headers.add("To", response.headers.get("To") or invite.headers.get("To") or "")
    headers.add("Call-ID", invite.call_id)
    number, _ = invite.cseq
    headers.add("CSeq", f"{number} ACK")
    return Request("ACK", invite.uri, headers)


@dataclass
class InviteClientTransaction(_Transaction):
    """One INVITE we sent: retransmits, absorbs, ACKs non-2xx; see the module docstring."""

    invite: Request | None = None
    reliable: bool = False
    ack: bytes | None = None  # the ACK of a non-2xx, once built
    last_received: Response | None = field(default=None, repr=False)

    TABLE: ClassVar[dict] = {}  # filled in below the class

    @classmethod
    def start(cls, key: str, invite: Request, now: float, reliable: bool = False) -> "InviteClientTransaction":
        """Send ``invite`` (into ``outbox``) and start Timers A and B."""
        tx = cls(key=key, invite=invite, reliable=reliable)
        tx.state = State.TRYING  # "Calling"
        tx.outbox.append(invite.serialize())
        if not reliable:
            tx.retransmit_interval = T1
            tx.timers[Timer.A] = now + T1  # type: ignore[index]
        tx.timers[Timer.B] = now + 64 * T1  # type: ignore[index]
        return tx

    # -- inputs from the transport ------------------------------------------------------
    def on_response(self, response: Response, now: float) -> list[TuEvent | ClientEvent]:
        self.last_received = response
        return self.handle(response_input(response.status), now)  # type: ignore[return-value]

    def on_transport_error(self, now: float) -> list[TuEvent | ClientEvent]:
        """The send failed (ICMP unreachable, TCP connect refused): §17.1.1.2, inform the TU."""
        if self.state in (State.TRYING, State.PROCEEDING):
            return [ClientEvent.TRANSPORT_ERROR, *self._terminate()]
        return []

    # -- handlers -------------------------------------------------------------------------
    def _timer_a(self, now: float, data: bytes | None) -> list:
        assert self.invite is not None
        self._send(self.invite.serialize())
        self.retransmit_interval *= 2  # §17.1.1.2: 2*T1, 4*T1, ... no T2 cap for INVITE
        self.timers[Timer.A] = now + self.retransmit_interval  # type: ignore[index]
        return []

    def _timer_b(self, now: float, data: bytes | None) -> list:
        return self._terminate(TuEvent.TIMEOUT)

    def _provisional(self, now: float, data: bytes | None) -> list:
        self.state = State.PROCEEDING
        self.timers.pop(Timer.A, None)  # type: ignore[call-overload]
        self.timers.pop(Timer.B, None)  # type: ignore[call-overload]
        return [ClientEvent.RESPONSE]

    def _success(self, now: float, data: bytes | None) -> list:
        self.state = State.ACCEPTED
        self.timers.clear()
        self.timers[Timer.M] = now + 64 * T1  # type: ignore[index]
        return [ClientEvent.RESPONSE]

    def _success_again(self, now: float, data: bytes | None) -> list:
        return [ClientEvent.RESPONSE]  # a 2xx retransmission (or a fork): the TU re-ACKs it

    def _failure(self, now: float, data: bytes | None) -> list:
        assert self.invite is not None and self.last_received is not None
        self.ack = ack_for_failure(self.invite, self.last_received).serialize()
        self._send(self.ack)
        self.state = State.COMPLETED
        self.timers.clear()
        if self.reliable:
            self.timers[Timer.D] = now  # type: ignore[index]
        else:
            self.timers[Timer.D] = now + 32.0  # type: ignore[index]  # "at least 32 s" for UDP
        return [ClientEvent.RESPONSE]

    def _failure_again(self, now: float, data: bytes | None) -> list:
        self._send(self.ack)  # absorbed: replay our ACK, do not bother the TU
        return []

    def _done(self, now: float, data: bytes | None) -> list:
        return self._terminate()


InviteClientTransaction.TABLE = {
    State.TRYING: {
        Timer.A: InviteClientTransaction._timer_a,
        Timer.B: InviteClientTransaction._timer_b,
        Input.PROVISIONAL: InviteClientTransaction._provisional,
        Input.SUCCESS: InviteClientTransaction._success,
        Input.FAILURE: InviteClientTransaction._failure,
    },
    State.PROCEEDING: {
        Input.PROVISIONAL: InviteClientTransaction._provisional,
        Input.SUCCESS: InviteClientTransaction._success,
        Input.FAILURE: InviteClientTransaction._failure,
    },
    State.ACCEPTED: {
        Input.SUCCESS: InviteClientTransaction._success_again,
        Timer.M: InviteClientTransaction._done,
    },
    State.COMPLETED: {
        Input.FAILURE: InviteClientTransaction._failure_again,
        Timer.D: InviteClientTransaction._done,
    },
}
