"""Sans-IO SIP: messages, transactions, dialogs, SDP and the user agent core."""

from .events import CallConfirmed, CallEnded, Event, IncomingCall
from .message import Headers, Request, Response, SipParseError, parse_message
from .useragent import UserAgent, UserAgentConfig

__all__ = [
    "CallConfirmed", "CallEnded", "Event", "Headers", "IncomingCall", "Request", "Response",
    "SipParseError", "UserAgent", "UserAgentConfig", "parse_message",
]
