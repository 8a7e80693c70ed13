"""The far end of an outbound call, for unit tests: reads what the UAC sends, answers it (no sockets)."""

from __future__ import annotations

from telephony.sip.message import Request, Response, parse_message, response_for
from telephony.sip.outbound import OutboundCall, OutboundConfig, Send
from telephony.sip.sdp import build_answer, negotiate, parse_sdp

TARGET = "sip:+15551234@trunk.example"
FAR_CONTACT = "sip:callee@198.51.100.7:5070"


def config(**overrides) -> OutboundConfig:
    base = dict(target=TARGET, from_uri="sip:tts@example.com", contact="sip:tts@192.0.2.1:5060",
                via_host="192.0.2.1:5060", media_address="192.0.2.1", media_port=30000, ring_timeout_s=20.0)
    base.update(overrides)
    return OutboundConfig(**base)


def drain(call: OutboundCall) -> list[tuple[Request | Response, Send]]:
    """Every message the call wants sent, parsed back with our own parser."""
    return [(parse_message(out.data), out) for out in call.messages_to_send()]


def requests(call: OutboundCall, method: str | None = None) -> list[Request]:
    out = [msg for msg, _ in drain(call) if isinstance(msg, Request)]
    return [m for m in out if method is None or m.method == method]


def reply(call: OutboundCall, req: Request, status: int, now: float, tag: str | None = "far1",
          extra=(), body: bytes = b"", reason: str = "") -> Response:
    resp = response_for(req, status, reason, to_tag=tag if status > 100 else None, extra=list(extra), body=body)
    call.receive(parse_message(resp.serialize()), now, ("198.51.100.7", 5070))
    return resp


def answer_sdp(invite: Request, prefer: str = "PCMA") -> bytes:
    offer = parse_sdp(invite.body)
    chosen, index = negotiate(offer, [prefer])
    return build_answer(offer, chosen, index, "198.51.100.7", 42000, session_id=77)


def ok(call: OutboundCall, invite: Request, now: float, tag: str = "far1", record_route=(), prefer="PCMA",
       body: bytes | None = None) -> Response:
    extra = [("Contact", f"<{FAR_CONTACT}>"), ("Content-Type", "application/sdp")]
    extra += [("Record-Route", rr) for rr in record_route]
    return reply(call, invite, 200, now, tag, extra, answer_sdp(invite, prefer) if body is None else body)


def in_dialog(call: OutboundCall, method: str, cseq: int, now: float, extra: str = "", body: bytes = b"",
              branch: str = "z9hG4bKfar0001", to_tag: str | None = None, also_sent: list | None = None) -> Response:
    """A request the callee sends inside the dialog; returns our (parsed) answer.

    Requests the UAC sends in reaction (a BYE after a transfer) go to ``also_sent``, if given,
    and must not be sent otherwise."""
    dialog = call.dialog
    assert dialog is not None
    data = (
        f"{method} sip:tts@192.0.2.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 198.51.100.7:5070;branch={branch}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: {dialog.remote_party}\r\n"
        f"To: <sip:tts@example.com>;tag={to_tag or dialog.local_tag}\r\n"
        f"Call-ID: {dialog.call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: <{FAR_CONTACT}>\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    call.receive(parse_message(data), now, ("198.51.100.7", 5070))
    out = drain(call)
    responses = [(m, s) for m, s in out if isinstance(m, Response)]
    others = [m for m, _ in out if not isinstance(m, Response)]
    if also_sent is None:
        assert others == [], others
    else:
        also_sent.extend(others)
    assert len(responses) == 1, out
    msg, send = responses[0]
    assert send.addr == ("198.51.100.7", 5070) and send.uri is None
    assert isinstance(msg, Response)
    return msg


def answered_call(**overrides) -> tuple[OutboundCall, Request]:
    """A call past its 200/ACK, with the far end's ACK drained; returns it and the INVITE."""
    call = OutboundCall(config(**overrides))
    call.start(0.0)
    (invite,) = requests(call, "INVITE")
    reply(call, invite, 180, 0.1)
    ok(call, invite, 0.2)
    assert [m.method for m in requests(call)] == ["ACK"]
    assert [e.kind for e in call.next_events()] == ["ringing", "answered"]
    return call, invite
