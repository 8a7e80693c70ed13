"""Builders of SIP requests as a caller would send them, for tests."""

from __future__ import annotations

import secrets

def offer(host: str = "10.0.0.5", port: int = 40000) -> str:
    return (
        f"v=0\r\no=caller 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    )


OFFER = offer()
# Real-socket tests use LOOPBACK: the server then sends RTP and BYEs only to 127.0.0.1.
LOOPBACK = "127.0.0.1"


def invite(call_id: str = "call-1", branch: str | None = None, to_tag: str | None = None, cseq: int = 1,
           sdp: str | None = OFFER, extra: str = "", via_host: str = "10.0.0.5:5060", rport: bool = True,
           user: str = "1000", host: str = "10.0.0.5") -> bytes:
    branch = branch or "z9hG4bK" + secrets.token_hex(4)
    to = f"<sip:{user}@192.0.2.1>" + (f";tag={to_tag}" if to_tag else "")
    body = sdp or ""
    head = (
        f"INVITE sip:{user}@192.0.2.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via_host};branch={branch}{';rport' if rport else ''}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: \"Caller\" <sip:5551234@{host}>;tag=caller1\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} INVITE\r\n"
        f"Contact: <sip:5551234@{host}:5060>\r\n"
        f"{extra}"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body.encode())}\r\n\r\n"
    )
    return (head + body).encode()


def request(method: str, call_id: str = "call-1", branch: str | None = None, cseq: int = 2,
            to_tag: str | None = None, extra: str = "", via_host: str = "10.0.0.5:5060") -> bytes:
    branch = branch or "z9hG4bK" + secrets.token_hex(4)
    to = "<sip:1000@192.0.2.1>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} sip:1000@192.0.2.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via_host};branch={branch};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:5551234@10.0.0.5>;tag=caller1\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"{extra}"
        f"Content-Length: 0\r\n\r\n"
    ).encode()
