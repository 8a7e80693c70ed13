"""Events the sans-IO user agent hands to the call layer."""

from __future__ import annotations

from dataclasses import dataclass

from .message import Request
from .sdp import SessionDescription


@dataclass(frozen=True)
class IncomingCall:
    """A new INVITE with a usable offer: answer it with ``UserAgent.answer`` or reject it."""

    call_id: str
    dialed: str  # user part of the Request-URI (else of To)
    caller: str  # user part of From
    request: Request
    offer: SessionDescription
    source: tuple[str, int]


@dataclass(frozen=True)
class CallConfirmed:
    """The ACK for our 2xx arrived: media may flow."""

    call_id: str


@dataclass(frozen=True)
class CallEnded:
    """The call is over; ``reason`` says why (remote-bye, cancel, ack-timeout, local-bye)."""

    call_id: str
    reason: str


Event = IncomingCall | CallConfirmed | CallEnded
