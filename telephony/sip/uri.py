"""SIP URIs, name-addr values (From, To, Contact, Route) and Via values.

Only what a UAS needs: the user part (the dialed number), host and port to
send to, and header parameters such as ``tag``, ``branch`` and ``rport``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_VIA_PROTOCOL = re.compile(r"SIP\s*/\s*2\.0\s*/\s*([^\s/;]+)\s+(.*)$", re.IGNORECASE | re.DOTALL)


def _parse_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        params[name.strip().lower()] = value.strip().strip('"') if sep else None
    return params


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def split_hostport(text: str, default_port: int | None = None) -> tuple[str, int | None]:
    """``"host:5060"`` / ``"[::1]:5060"`` / ``"host"`` → (host, port)."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad IPv6 reference {text!r}")
        host, rest = text[: end + 1], text[end + 1:]
        if rest.startswith(":"):
            return host, _port(rest[1:])
        if rest:
            raise ValueError(f"bad host:port {text!r}")
        return host, default_port
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    return host, _port(port)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port {text!r}")
    return int(text)


@dataclass
class SipUri:
    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str = ""

    @classmethod
    def parse(cls, text: str) -> "SipUri":
        text = text.strip()
        scheme, sep, rest = text.partition(":")
        scheme = scheme.lower()
        if not sep or scheme not in ("sip", "sips"):
            raise ValueError(f"not a SIP URI: {text!r}")
        user: str | None = None
        if "@" in rest:  # the user part may hold '?' and ';' (RFC 4475 §3.1.1.2, §3.1.1.9)
            user, _, rest = rest.rpartition("@")
        rest, _, headers = rest.partition("?")
        if user is not None:
            user = user.partition(":")[0]  # drop a password
        hostport, _, params = rest.partition(";")
        host, port = split_hostport(hostport)
        if not host:
            raise ValueError(f"SIP URI without host: {text!r}")
        return cls(scheme, user, host.lower(), port, _parse_params(params), headers)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        hdrs = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{user}{self.host}{port}{_format_params(self.params)}{hdrs}"


@dataclass
class NameAddr:
    """``"Alice" <sip:alice@host>;tag=1`` or the bare ``sip:alice@host;tag=1`` form."""

    uri: str
    display: str = ""
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "NameAddr":
        text = text.strip()
        lt = _unquoted_index(text, "<")
        if lt >= 0:
            gt = text.find(">", lt)
            if gt < 0:
                raise ValueError(f"unterminated <...> in {text!r}")
            display = text[:lt].strip().strip('"')
            return cls(text[lt + 1: gt].strip(), display, _parse_params(text[gt + 1:]))
        # addr-spec form: parameters after the URI belong to the header (§20.10)
        uri, _, params = text.partition(";")
        if not uri.strip() or ":" not in uri:
            raise ValueError(f"bad address {text!r}")
        return cls(uri.strip(), "", _parse_params(params))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        display = f'"{self.display}" ' if self.display else ""
        return f"{display}<{self.uri}>{_format_params(self.params)}"


def _unquoted_index(text: str, ch: str) -> int:
    in_quote = False
    escaped = False
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif c == "\\" and in_quote:
            escaped = True
        elif c == '"':
            in_quote = not in_quote
        elif c == ch and not in_quote:
            return i
    return -1


@dataclass
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=z9hG4bK…;rport``."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "Via":
        # LWS may surround the slashes (RFC 3261 §25.1 SLASH = SWS "/" SWS; RFC 4475 §3.1.1.1)
        m = _VIA_PROTOCOL.match(text.strip())
        if m is None:
            raise ValueError(f"bad Via protocol {text[:40]!r}")
        parts = ["SIP", "2.0", m.group(1)]
        sent_by, _, params = m.group(2).strip().partition(";")
        host, port = split_hostport(sent_by.replace(" ", ""))
        if not host:
            raise ValueError(f"bad Via sent-by {text!r}")
        return cls(parts[2].upper(), host, port, _parse_params(params))

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{_format_params(self.params)}"
