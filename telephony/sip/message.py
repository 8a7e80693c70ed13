"""SIP messages (RFC 3261 §7): parse bytes into requests and responses, and back.

Pure functions over bytes: no sockets, no clock. Header names are kept in their
canonical long form (compact forms such as ``v`` and ``i`` are expanded), values
of list-valued headers are split on top-level commas, and the body is framed by
Content-Length. Anything malformed raises :class:`SipParseError`, which carries
what could be parsed so the caller can still answer 400 when that is possible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from . import grammar

SIP_VERSION = "SIP/2.0"

# RFC 3261 §7.3.3 and the IANA registry of compact forms.
COMPACT_FORMS = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact",
    "k": "Supported", "l": "Content-Length", "m": "Contact", "n": "Identity-Info",
    "o": "Event", "r": "Refer-To", "s": "Subject", "t": "To", "u": "Allow-Events",
    "v": "Via", "x": "Session-Expires", "y": "Identity",
}
_CANONICAL = {
    name.lower(): name
    for name in (
        "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Authentication-Info",
        "Authorization", "Call-ID", "Call-Info", "Contact", "Content-Disposition", "Content-Encoding",
        "Content-Language", "Content-Length", "Content-Type", "CSeq", "Date", "Error-Info", "Expires",
        "From", "In-Reply-To", "Max-Forwards", "Min-Expires", "MIME-Version", "Organization",
        "Priority", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "Record-Route",
        "Reply-To", "Require", "Retry-After", "Route", "Server", "Subject", "Supported", "Timestamp",
        "To", "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate", "RSeq", "RAck",
        "Session-Expires", "Min-SE", "Event", "Allow-Events", "Refer-To", "Referred-By",
        "P-Asserted-Identity", "Diversion", "Privacy", "Reason",
    )
}
_CANONICAL.update({k: v for k, v in COMPACT_FORMS.items()})

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1). Others
# (Date, WWW-Authenticate, Authorization, ...) may contain literal commas.
LIST_HEADERS = frozenset(
    h.lower()
    for h in (
        "Via", "Route", "Record-Route", "Contact", "Allow", "Supported", "Require", "Proxy-Require",
        "Unsupported", "Accept", "Accept-Encoding", "Accept-Language", "Content-Encoding",
        "Content-Language", "Allow-Events", "Alert-Info", "Call-Info", "Error-Info", "In-Reply-To",
        "Reply-To", "Warning", "P-Asserted-Identity", "Diversion", "Reason",
    )
)

# Without these no response can be routed back or matched to a transaction.
RESPONSE_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq")

_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_STATUS_LINE = re.compile(r"^SIP/2\.0 ([1-6][0-9]{2})(?: (.*))?$", re.IGNORECASE)
# Method SP Request-URI SP SIP-Version, exactly one SP each (RFC 3261 §7.1, RFC 4475 §3.1.2.9/10)
_REQUEST_LINE = re.compile(r"^(\S+) (\S+) (SIP/\d+\.\d+)$", re.IGNORECASE)
# Methods of the IANA registry: a request whose CSeq names another method than one of these is
# an unknown method first (501, RFC 4475 §3.1.2.18), a mismatch only for a known one (400).
KNOWN_METHODS = frozenset((
    "ACK", "BYE", "CANCEL", "INFO", "INVITE", "MESSAGE", "NOTIFY", "OPTIONS", "PRACK", "PUBLISH",
    "REFER", "REGISTER", "SUBSCRIBE", "UPDATE",
))
# Header fields that appear at most once (RFC 3261 §7.3.1, RFC 4475 §3.3.8)
SINGLE_HEADERS = ("From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Type")
# Header fields whose values are name-addr / addr-spec (checked by grammar.check_name_addr)
_ADDRESS_HEADERS = ("From", "To", "Contact", "Route", "Record-Route", "Reply-To")

# The reason phrases of RFC 3261 §21 and of the RFCs that added codes (IANA "SIP Response Codes").
REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued", 183: "Session Progress",
    199: "Early Dialog Terminated", 200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily", 305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority", 420: "Bad Extension", 421: "Extension Required",
    422: "Session Interval Too Small", 423: "Interval Too Brief", 428: "Use Identity Header",
    429: "Provide Referrer Identity", 433: "Anonymity Disallowed", 436: "Bad Identity-Info",
    437: "Unsupported Certificate", 438: "Invalid Identity Header", 439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded", 469: "Bad Info Package", 470: "Consent Needed",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending",
    493: "Undecipherable", 494: "Security Agreement Required",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Server Time-out", 505: "Version Not Supported", 513: "Message Too Large",
    555: "Push Notification Service Not Supported", 580: "Precondition Failure",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
    607: "Unwanted", 608: "Rejected",
}


# For a code missing from the table: the phrase of its class's x00 code (RFC 3261 §21: an unknown
# code is treated as x00 of its class), never a made-up word.
_CLASS_PHRASES = {1: "Trying", 2: "OK", 3: "Multiple Choices", 4: "Bad Request", 5: "Server Internal Error",
                  6: "Busy Everywhere"}


class SipParseError(ValueError):
    """A datagram that is not a valid SIP message.

    ``start_line`` and ``headers`` hold what was parsed before the error, so a
    caller can answer ``400 Bad Request`` when the request is identifiable.
    """

    def __init__(self, reason: str, start_line: str = "", headers: "Headers | None" = None, status: int = 400):
        super().__init__(reason)
        self.reason = reason
        self.start_line = start_line
        self.headers = headers if headers is not None else Headers()
        self.status = status  # the answer: 400, 505 (version), 501 (unknown method, CSeq mismatch)

    @property
    def request_method(self) -> str | None:
        """The method of a start line that is a request's, however malformed the rest of it."""
        method = self.start_line.split(" ", 1)[0]
        if method.upper().startswith("SIP/") or not _TOKEN.match(method) or " " not in self.start_line:
            return None
        return method

    @property
    def can_respond(self) -> bool:
        """True when an error response can be formed: a request (not ACK) with a Via and a CSeq.

        From, To and Call-ID are copied when present: RFC 4475 §3.3.1 (insuf) wants a 400
        even for a request that lacks them.
        """
        return self.request_method is not None and self.request_method != "ACK" and all(
            self.headers.get(h) for h in ("Via", "CSeq")
        )


def canonical_name(name: str) -> str:
    """The long, conventionally capitalised form of a header name."""
    low = name.lower()
    if low in _CANONICAL:
        return _CANONICAL[low]
    return "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))


def split_commas(value: str) -> list[str]:
    """Split a header value on commas that are outside quotes and angle brackets."""
    parts: list[str] = []
    depth_angle = 0
    in_quote = False
    escaped = False
    start = 0
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif in_quote:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "<":
            depth_angle += 1
        elif ch == ">":
            depth_angle = max(0, depth_angle - 1)
        elif ch == "," and depth_angle == 0:
            parts.append(value[start:i].strip())
            start = i + 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


@dataclass
class Headers:
    """An ordered multi-map of header fields, looked up case-insensitively.

    Each stored item is one header *value*: a list-valued header that arrived
    as ``Via: a, b`` is held as two ``Via`` items, as RFC 3261 §7.3.1 allows.
    """

    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, value: str) -> None:
        self.items.append((canonical_name(name), value))

    def get(self, name: str, default: str | None = None) -> str | None:
        key = canonical_name(name)
        for n, v in self.items:
            if n == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        key = canonical_name(name)
        return [v for n, v in self.items if n == key]

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` with one value, at the first one's position."""
        key = canonical_name(name)
        out: list[tuple[str, str]] = []
        done = False
        for n, v in self.items:
            if n == key:
                if not done:
                    out.append((key, value))
                    done = True
            else:
                out.append((n, v))
        if not done:
            out.append((key, value))
        self.items = out

    def remove(self, name: str) -> None:
        key = canonical_name(name)
        self.items = [(n, v) for n, v in self.items if n != key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def copy(self) -> "Headers":
        return Headers(list(self.items))


class _Fields:
    """What requests and responses both read from their headers."""

    headers: Headers

    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        return parse_cseq(self.headers.get("CSeq") or "")


@dataclass
class Request(_Fields):
    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def serialize(self) -> bytes:
        return _serialize(f"{self.method} {self.uri} {SIP_VERSION}", self.headers, self.body)


@dataclass
class Response(_Fields):
    status: int
    reason: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def serialize(self) -> bytes:
        reason = self.reason or REASON_PHRASES.get(self.status) or _CLASS_PHRASES[self.status // 100]
        return _serialize(f"{SIP_VERSION} {self.status} {reason}", self.headers, self.body)


Message = Request | Response


def _serialize(start_line: str, headers: Headers, body: bytes) -> bytes:
    lines = [start_line]
    for name, value in headers:
        if name in ("Content-Length",):
            continue
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def parse_cseq(value: str) -> tuple[int, str]:
    """``"314159 INVITE"`` → ``(314159, "INVITE")``; raises ValueError if malformed."""
    parts = value.split()
    if len(parts) != 2 or not parts[0].isdigit() or not _TOKEN.match(parts[1]):
        raise ValueError(f"bad CSeq {value!r}")
    number = int(parts[0])
    if number >= 2**31:
        raise ValueError(f"CSeq number out of range: {value!r}")
    return number, parts[1]


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        idx = data.find(sep)
        if idx >= 0:
            return data[:idx], data[idx + len(sep):]
    # No empty line: a message with no body whose final CRLF was lost.
    return data.rstrip(b"\r\n"), b""


def _unfold(head: str) -> list[str]:
    """Header lines with continuation lines (leading SP/HT) joined (RFC 3261 §7.3.1)."""
    lines: list[str] = []
    for raw in re.split(r"\r\n|\n", head):
        if raw[:1] in (" ", "\t") and lines:
            lines[-1] = lines[-1].rstrip() + " " + raw.strip()
        else:
            lines.append(raw)
    return lines


def parse_message(data: bytes, max_headers: int = 0) -> Message:
    """Parse one SIP message from a datagram (or a framed stream chunk).

    ``max_headers`` > 0 refuses messages with more header lines than that
    (a cheap guard against header floods).
    """
    data = data.lstrip(b"\r\n")
    if not data:
        raise SipParseError("empty message")
    head_bytes, rest = _split_head(data)
    try:
        head = head_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("header section is not UTF-8") from None
    lines = _unfold(head)
    start_line = lines[0]
    headers = Headers()
    too_many = bool(max_headers) and len(lines) - 1 > max_headers
    for line in lines[1:]:
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not _TOKEN.match(name):
            raise SipParseError(f"malformed header line {line[:40]!r}", start_line, headers)
        value = value.strip()
        if name.lower() in LIST_HEADERS or canonical_name(name).lower() in LIST_HEADERS:
            for part in split_commas(value) or [""]:
                headers.add(name, part)
        else:
            headers.add(name, value)

    if too_many:  # reported with the headers parsed, so the sender still gets its 400
        raise SipParseError(f"more than {max_headers} header lines", start_line, headers)
    msg: Message
    status = _STATUS_LINE.match(start_line)
    if status:
        msg = Response(int(status.group(1)), status.group(2) or "", headers)
    else:
        req = _REQUEST_LINE.match(start_line)
        if req is None or not _TOKEN.fullmatch(req.group(1)):
            raise SipParseError(f"malformed start line {start_line[:60]!r}", start_line, headers)
        method, uri, version = req.groups()
        if version.upper() != SIP_VERSION:
            raise SipParseError(f"unsupported version {version!r}", start_line, headers, status=505)
        _check_request_uri(uri, start_line, headers)
        msg = Request(method, uri, headers)

    grouped: dict[str, list[str]] = {}  # canonical name → values, built once (not a scan per lookup)
    for name, value in headers.items:
        grouped.setdefault(name, []).append(value)
    for name in RESPONSE_HEADERS:
        if name not in grouped:
            raise SipParseError(f"missing {name}", start_line, headers)
    for name in SINGLE_HEADERS:
        if len(grouped.get(name, ())) > 1:
            raise SipParseError(f"more than one {name}", start_line, headers)
    try:
        _, cseq_method = parse_cseq(grouped["CSeq"][0])
    except ValueError as exc:
        raise SipParseError(str(exc), start_line, headers) from None
    if isinstance(msg, Request) and cseq_method != msg.method:
        unknown = msg.method.upper() not in KNOWN_METHODS
        raise SipParseError("CSeq method does not match the request method", start_line, headers,
                            status=501 if unknown else 400)
    if isinstance(msg, Request):
        _check_request_headers(headers, grouped, start_line)

    length_values = grouped.get("Content-Length", [])
    if length_values:
        if len(set(length_values)) > 1 or not length_values[0].isdigit():
            raise SipParseError(f"bad Content-Length {length_values!r}", start_line, headers)
        length = int(length_values[0])
        if length > len(rest):
            raise SipParseError("body shorter than Content-Length", start_line, headers)
        msg.body = rest[:length]
    else:
        msg.body = rest  # UDP: the datagram ends the message (RFC 3261 §18.3)
    return msg


def _check_request_uri(uri: str, start_line: str, headers: "Headers") -> None:
    """A Request-URI is a bare URI; a SIP one carries no escaped headers (RFC 3261 §19.1.1 table 1)."""
    try:
        grammar.check_uri(uri, in_brackets=True)
    except ValueError as exc:
        raise SipParseError(f"malformed Request-URI: {exc}", start_line, headers) from None
    scheme, _, rest = uri.partition(":")
    if scheme.lower() in ("sip", "sips") and "?" in rest.rpartition("@")[2]:
        raise SipParseError("headers are not allowed in a Request-URI", start_line, headers)


def _check_request_headers(headers: "Headers", grouped: dict[str, list[str]], start_line: str) -> None:
    """The grammar of the headers a UAS acts on: addresses, Via, Max-Forwards, Date."""
    try:
        for name in _ADDRESS_HEADERS:
            for value in grouped.get(name, ()):
                grammar.check_name_addr(value, star_ok=name == "Contact")
        for value in grouped.get("Via", ()):
            grammar.check_via(value)
        for mf in grouped.get("Max-Forwards", ()):
            if not mf.isdigit():
                raise ValueError(f"bad Max-Forwards {mf[:20]!r}")
        for date in grouped.get("Date", ()):
            grammar.check_date(date)
    except ValueError as exc:
        raise SipParseError(str(exc), start_line, headers) from None


def check_address_headers(msg: Message) -> None:
    """The grammar of a response's address headers (To, From, Contact, Record-Route, ...): a UAC
    copies them into the requests it sends (ACK, BYE), so a response it acts on must pass what a
    request must. SipParseError if not."""
    try:
        for name in _ADDRESS_HEADERS:
            for value in msg.headers.get_all(name):
                grammar.check_name_addr(value, star_ok=name == "Contact")
    except ValueError as exc:
        raise SipParseError(str(exc)) from None


def frame_length(buffer: bytes) -> int | None:
    """Length of the first complete message in a stream buffer, or None if incomplete.

    For stream transports (TCP) a message ends Content-Length bytes after the
    empty line; this is the seam the TCP transport will use.
    """
    stripped = buffer.lstrip(b"\r\n")
    offset = len(buffer) - len(stripped)
    idx = stripped.find(b"\r\n\r\n")
    if idx < 0:
        return None
    head = stripped[:idx].decode("utf-8", "replace")
    lengths: set[int] = set()
    for line in _unfold(head)[1:]:
        name, _, value = line.partition(":")
        if canonical_name(name.strip()) == "Content-Length":
            value = value.strip()
            if not value.isdigit():
                raise SipParseError("bad Content-Length in stream")
            lengths.add(int(value))
    if len(lengths) > 1:  # which one frames the message is unknowable (RFC 4475 §3.3.9)
        raise SipParseError("conflicting Content-Length values in stream")
    length = lengths.pop() if lengths else 0
    total = offset + idx + 4 + length
    return total if len(buffer) >= total else None


def response_for(request: Request, status: int, reason: str = "", to_tag: str | None = None,
                 extra: Iterable[tuple[str, str]] = (), body: bytes = b"") -> Response:
    """A response that copies Via, From, To, Call-ID and CSeq (RFC 3261 §8.2.6.2)."""
    headers = Headers()
    for via in request.headers.get_all("Via"):
        headers.add("Via", via)
    headers.add("From", request.headers.get("From") or "")
    to = request.headers.get("To") or ""
    if to_tag and ";tag=" not in to.lower().replace(" ", ""):
        to = f"{to};tag={to_tag}"
    headers.add("To", to)
    headers.add("Call-ID", request.headers.get("Call-ID") or "")
    headers.add("CSeq", request.headers.get("CSeq") or "")
    for name, value in extra:
        headers.add(name, value)
    return Response(status, reason or REASON_PHRASES.get(status, ""), headers, body)


def response_for_error(err: SipParseError, status: int | None = None,
                       extra: Iterable[tuple[str, str]] = ()) -> Response:
    """The error response (``err.status`` unless given) to a request that failed to parse.

    Copies every Via and the first From, To, Call-ID and CSeq there are (a request may lack
    some, RFC 4475 §3.3.1, or repeat them, §3.3.8).
    """
    status = err.status if status is None else status
    headers = Headers()
    for name in RESPONSE_HEADERS:
        values = err.headers.get_all(name)
        for value in values if name == "Via" else values[:1]:
            headers.add(name, value)
    for name, value in extra:
        headers.add(name, value)
    detail = re.sub(r"[\x00-\x1f\x7f]", " ", err.reason)[:80]
    reason = f"{REASON_PHRASES.get(status, 'Bad Request')} - {detail}" if status == 400 else REASON_PHRASES[status]
    return Response(status, reason, headers)
