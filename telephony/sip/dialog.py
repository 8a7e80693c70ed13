"""The UAS side of an INVITE dialog (RFC 3261 §12): tags, route set, CSeq.

Built from the initial INVITE; it forms the requests we send inside the
dialog (our BYE) with the right Request-URI, Route headers and CSeq.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from .message import Headers, Request
from .uri import NameAddr


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str | None
    local_party: str  # the To value of the INVITE, our tag added
    remote_party: str  # the From value of the INVITE
    remote_target: str  # the caller's Contact URI
    route_set: list[str] = field(default_factory=list)
    remote_cseq: int = 0
    local_cseq: int = 0
    source: tuple[str, int] = ("", 0)  # where the INVITE came from
    transport: str = "UDP"  # the INVITE's transport: in-dialog requests use it too

    @classmethod
    def from_invite(cls, invite: Request, local_tag: str, source: tuple[str, int]) -> "Dialog":
        from_value = invite.headers.get("From") or ""
        contact = invite.headers.get("Contact")
        target = NameAddr.parse(contact).uri if contact else NameAddr.parse(from_value).uri
        cseq, _ = invite.cseq
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=NameAddr.parse(from_value).tag,
            local_party=f"{invite.headers.get('To')};tag={local_tag}",
            remote_party=from_value,
            remote_target=target,
            # UAS: the route set is the Record-Route list in order (§12.1.1)
            route_set=invite.headers.get_all("Record-Route"),
            remote_cseq=cseq,
            local_cseq=secrets.randbelow(2**16) + 1,
            source=source,
        )

    def next_hop_uri(self) -> str:
        """The URI whose host and port receive our in-dialog requests."""
        if self.route_set:
            return NameAddr.parse(self.route_set[0]).uri
        return self.remote_target

    def build_request(self, method: str, via: str, contact: str, extra: list[tuple[str, str]] | None = None) -> Request:
        self.local_cseq += 1
        headers = Headers()
        headers.add("Via", via)
        headers.add("Max-Forwards", "70")
        uri = self.remote_target
        routes = list(self.route_set)
        if routes and "lr" not in NameAddr.parse(routes[0]).uri.lower().split(";"):
            # strict router (RFC 2543 style): it goes in the Request-URI (§12.2.1.1)
            uri = NameAddr.parse(routes[0]).uri
            routes = routes[1:] + [f"<{self.remote_target}>"]
        for route in routes:
            headers.add("Route", route)
        headers.add("From", self.local_party)
        headers.add("To", self.remote_party)
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{self.local_cseq} {method}")
        headers.add("Contact", contact)
        for name, value in extra or []:
            headers.add(name, value)
        return Request(method, uri, headers)
