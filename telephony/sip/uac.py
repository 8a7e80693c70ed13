"""Helpers of a SIP UAC that are not one call's state: the SDP offer, the dialog a 2xx
creates, the next hop of a URI, the branch of a message. Pure functions, no I/O.
"""

from __future__ import annotations

from .dialog import Dialog
from .grammar import check_name_addr, check_uri
from .message import Message, Request, Response
from .uri import NameAddr, SipUri


def hop_address(uri: str) -> tuple[str, int, str]:
    """(host, port, transport) of a next-hop URI without DNS: the port defaults to 5060 (5061
    for sips or TLS), the transport to the URI's ``transport`` parameter, else TLS for sips, UDP for sip.
    A host name still needs resolving (RFC 3263 SRV/A) by the I/O layer."""
    parsed = SipUri.parse(uri)
    secure = parsed.scheme == "sips"
    transport = (parsed.params.get("transport") or ("TLS" if secure else "UDP")).upper()
    port = parsed.port or (5061 if secure or transport == "TLS" else 5060)
    return parsed.host.strip("[]"), port, transport


def build_offer(address: str, port: int, session_id: int, codecs: tuple[str, ...] = ("PCMU", "PCMA"),
                dtmf_payload_type: int | None = 101) -> bytes:
    """Our SDP offer: G.711 in ``codecs`` order (static payload types 0/8), telephone-event, 20 ms."""
    static = {"PCMU": 0, "PCMA": 8}
    unknown = [c for c in codecs if c not in static]
    if unknown or not codecs:
        raise ValueError(f"codecs must be PCMU and/or PCMA, got {list(codecs)}")
    ip_kind = "IP6" if ":" in address else "IP4"
    fmts = [str(static[c]) for c in codecs] + ([str(dtmf_payload_type)] if dtmf_payload_type is not None else [])
    lines = [
        "v=0",
        f"o=sip-tts {session_id} 1 IN {ip_kind} {address}",
        "s=sip-tts",
        f"c=IN {ip_kind} {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(fmts)}",
        *[f"a=rtpmap:{static[c]} {c}/8000" for c in codecs],
    ]
    if dtmf_payload_type is not None:
        lines += [f"a=rtpmap:{dtmf_payload_type} telephone-event/8000", f"a=fmtp:{dtmf_payload_type} 0-16"]
    lines += ["a=ptime:20", "a=sendrecv"]
    return ("\r\n".join(lines) + "\r\n").encode()


def uac_dialog(invite: Request, response: Response) -> Dialog:
    """The dialog a 2xx to our INVITE creates (§12.1.2): route set = Record-Route reversed."""
    to_value = response.headers.get("To") or ""
    contact = response.headers.get("Contact")
    target = NameAddr.parse(contact).uri if contact else invite.uri
    for value in [to_value, *response.headers.get_all("Record-Route")]:
        check_name_addr(value)  # they go into our ACK's and BYE's To and Route headers
    check_uri(target, in_brackets=False)  # it becomes our ACK's and BYE's Request-URI: ValueError if unusable
    SipUri.parse(target)  # a 2xx's Contact must be a SIP or SIPS URI (§12.1.2); ValueError if not
    cseq, _ = invite.cseq
    from_value = invite.headers.get("From") or ""
    return Dialog(
        call_id=invite.call_id,
        local_tag=NameAddr.parse(from_value).tag or "",
        remote_tag=NameAddr.parse(to_value).tag,
        local_party=from_value,
        remote_party=to_value,
        remote_target=target,
        route_set=list(reversed(response.headers.get_all("Record-Route"))),
        remote_cseq=0,
        local_cseq=cseq,
    )


def branch_of(msg: Message) -> str:
    via = msg.headers.get("Via") or ""
    for part in via.split(";")[1:]:
        name, _, value = part.partition("=")
        if name.strip().lower() == "branch":
            return value.strip()
    return ""
