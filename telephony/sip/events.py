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
    session_expires: int | None = None  # RFC 4028 interval agreed (the caller refreshes), if any


@dataclass(frozen=True)
class CallConfirmed:
    """The ACK for our 2xx arrived: media may flow."""

    call_id: str


@dataclass(frozen=True)
class CallEnded:
    """The call is over; ``reason`` says why (remote-bye, cancel, ack-timeout, local-bye)."""

    call_id: str
    reason: str


@dataclass(frozen=True)
class SessionUpdate:
    """A re-INVITE or UPDATE inside the dialog: answer with ``UserAgent.answer_update`` (or reject it).

    ``offer`` is None for a re-INVITE without SDP (we offer our current session in the 200).
    Any update also renegotiates the session timer (RFC 4028: a 200 to one without
    Session-Expires turns it off).
    """

    call_id: str
    method: str
    offer: SessionDescription | None
    session_expires: int | None = None  # the RFC 4028 interval a 200 to it agrees to (None: no timer)


@dataclass(frozen=True)
class InfoReceived:
    """INFO inside the dialog (already answered 200), e.g. application/dtmf-relay."""

    call_id: str
    content_type: str
    body: bytes


Event = IncomingCall | CallConfirmed | CallEnded | SessionUpdate | InfoReceived
