"""Blind transfer (REFER + NOTIFY sipfrag) and the refusal of incoming REFERs, with injected time and bytes."""

from __future__ import annotations

import pytest

from telephony.sip.auth import DigestAuthenticator, parse_digest
from telephony.sip.dialog import Dialog
from telephony.sip.digest_client import DigestClient
from telephony.sip.message import Headers, Request, parse_message, response_for
from telephony.sip.refer import BlindTransfer, parse_sipfrag_status
from telephony.sip.transaction import State
from telephony.sip.uri import NameAddr, Via

from . import sipmsg
from .uacpeer import FAR_CONTACT, answered_call, drain, in_dialog, reply, requests

AGENT = "sip:agent@pbx.example"


def notify(call, frag: str, cseq: int, now: float, state: str = "active;expires=60", branch: str | None = None,
           content_type: str = "message/sipfrag;version=2.0", event: str = "refer", also_sent: list | None = None):
    extra = f"Event: {event}\r\nSubscription-State: {state}\r\nContent-Type: {content_type}\r\n"
    return in_dialog(call, "NOTIFY", cseq, now, extra=extra, body=frag.encode(),
                     branch=branch or f"z9hG4bKn{cseq}", also_sent=also_sent)


def start_transfer(**kw):
    call, invite = answered_call()
    call.transfer(AGENT, 1.0, **kw)
    ((refer, send),) = drain(call)
    return call, invite, refer, send


def test_refer_is_well_formed_inside_the_dialog():
    call, invite, refer, send = start_transfer()
    assert isinstance(refer, Request) and refer.method == "REFER"
    assert refer.uri == FAR_CONTACT and send.uri == FAR_CONTACT
    assert refer.headers.get("Refer-To") == f"<{AGENT}>"
    assert refer.headers.get("Referred-By") == "<sip:tts@example.com>"
    assert refer.cseq == (2, "REFER") and refer.call_id == invite.call_id
    assert NameAddr.parse(refer.headers.get("To")).tag == "far1"
    assert NameAddr.parse(refer.headers.get("From")).tag == NameAddr.parse(invite.headers.get("From")).tag
    assert Via.parse(refer.headers.get("Via")).branch.startswith("z9hG4bK")
    assert NameAddr.parse(refer.headers.get("Contact")).uri == "sip:tts@192.0.2.1:5060"


def test_transfer_succeeds_on_a_2xx_sipfrag_then_we_hang_up():
    call, _, refer, _ = start_transfer()
    reply(call, refer, 202, 1.1, reason="Accepted")
    assert [(e.kind, e.status) for e in call.next_events()] == [("accepted", 202)]
    first = notify(call, "SIP/2.0 100 Trying\r\n", 1, 1.2)
    assert first.status == 200 and first.cseq == (1, "NOTIFY")
    assert first.headers.get("Via") == "SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bKn1"
    ringing = notify(call, "SIP/2.0 180 Ringing\r\n", 2, 2.0)
    assert ringing.status == 200
    assert [(e.kind, e.status, e.reason) for e in call.next_events()] == [
        ("progress", 100, "Trying"), ("progress", 180, "Ringing")]
    sent: list = []
    final = notify(call, "SIP/2.0 200 OK\r\nContent-Type: application/sdp\r\n", 3, 4.0,
                   state="terminated;reason=noresource", also_sent=sent)
    assert final.status == 200
    events = call.next_events()
    assert [(e.kind, getattr(e, "status", None)) for e in events] == [("succeeded", 200), ("ended", None)]
    assert events[1].reason == "transferred"
    (bye,) = sent
    assert bye.method == "BYE" and bye.cseq == (3, "BYE") and NameAddr.parse(bye.headers.get("To")).tag == "far1"
    # The NOTIFY retransmitted: the same 200 is replayed, nothing new happens.
    again = notify(call, "SIP/2.0 200 OK\r\n", 3, 4.2)
    assert again.status == 200 and call.next_events() == []
    reply(call, bye, 200, 4.3)
    fired_until = 100.0
    while (when := call.deadline()) is not None and when <= fired_until:
        call.handle_timer(when)
    assert call.finished


@pytest.mark.parametrize("frag,status", [("SIP/2.0 486 Busy Here", 486), ("SIP/2.0 603 Declined", 603),
                                         ("sip/2.0 404 Not Found", 404)])
def test_transfer_fails_on_an_error_sipfrag_and_the_call_stays_up(frag, status):
    call, _, refer, _ = start_transfer()
    reply(call, refer, 202, 1.1)
    assert notify(call, frag + "\r\n", 1, 2.0, state="terminated").status == 200
    assert [(e.kind, e.status) for e in call.next_events()] == [("accepted", 202), ("failed", status)]
    assert call.phase == "established" and call.outcome is None and requests(call, "BYE") == []
    # The call can still be transferred again, and hung up.
    call.transfer("sip:other@pbx.example", 3.0)
    (refer2,) = requests(call, "REFER")
    assert refer2.headers.get("Refer-To") == "<sip:other@pbx.example>" and refer2.cseq == (3, "REFER")


def test_refer_refused_by_the_far_end_fails_with_its_code():
    call, _, refer, _ = start_transfer()
    reply(call, refer, 603, 1.1, reason="Decline")
    (event,) = call.next_events()
    assert (event.kind, event.status) == ("failed", 603) and call.phase == "established"


def test_refer_without_any_response_fails_at_timer_f():
    call, _, refer, _ = start_transfer(timeout_s=60.0)
    while (when := call.deadline()) is not None and when <= 40.0:
        call.handle_timer(when)
    resent = requests(call, "REFER")
    assert resent and all(r.serialize() == refer.serialize() for r in resent)  # Timer E retransmissions
    (event,) = call.next_events()
    assert (event.kind, event.status) == ("failed", 408) and call.phase == "established"


def test_transfer_times_out_without_a_final_notify():
    call, _, refer, _ = start_transfer(timeout_s=10.0)
    reply(call, refer, 202, 1.1)
    notify(call, "SIP/2.0 180 Ringing\r\n", 1, 2.0)
    call.handle_timer(10.9)
    assert [e.kind for e in call.next_events()] == ["accepted", "progress"]
    call.handle_timer(11.0)
    (event,) = call.next_events()
    assert (event.kind, event.status) == ("failed", None) and "timeout" in event.reason
    assert call.phase == "established" and requests(call, "BYE") == []


def test_subscription_ending_without_final_status_is_a_failure():
    call, _, refer, _ = start_transfer()
    reply(call, refer, 202, 1.1)
    notify(call, "SIP/2.0 100 Trying\r\n", 1, 2.0, state="terminated;reason=timeout")
    assert [(e.kind, e.status) for e in call.next_events()] == [("accepted", 202), ("progress", 100), ("failed", 100)]


def test_notify_overtaking_the_202_still_counts():
    call, _, refer, _ = start_transfer()
    sent: list = []
    notify(call, "SIP/2.0 200 OK\r\n", 1, 1.05, state="terminated", also_sent=sent)
    assert [m.method for m in sent] == ["BYE"]
    reply(call, refer, 202, 1.1)  # late 202: no second outcome
    assert [e.kind for e in call.next_events()] == ["succeeded", "ended"]


@pytest.mark.parametrize("kw,status", [
    (dict(event="presence"), 489),
    (dict(content_type="text/plain"), 415),
])
def test_bad_notify_is_refused(kw, status):
    call, _, refer, _ = start_transfer()
    reply(call, refer, 202, 1.1)
    assert notify(call, "SIP/2.0 200 OK\r\n", 1, 2.0, **kw).status == status
    assert [e.kind for e in call.next_events()] == ["accepted"]


def test_notify_with_garbage_sipfrag_gets_400():
    call, _, refer, _ = start_transfer()
    resp = notify(call, "hello\r\n", 1, 2.0)
    assert resp.status == 400 and "sipfrag" in resp.reason


def test_refer_challenged_by_the_far_end_is_answered():
    far = DigestAuthenticator("pbx.example", {"acct": "pw"})
    call, invite = answered_call(username="acct", password="pw")
    call.transfer(AGENT, 1.0)
    (refer,) = requests(call, "REFER")
    reply(call, refer, 401, 1.1, extra=far.challenges(1.1))
    (retry,) = requests(call, "REFER")
    assert retry.cseq == (3, "REFER")
    credentials = retry.headers.get("Authorization")
    assert parse_digest(credentials)["uri"] == FAR_CONTACT
    assert far.check(Request("REFER", retry.uri, Headers([("Authorization", credentials)])), 1.2) == (True, False)
    reply(call, retry, 202, 1.3)
    assert [e.kind for e in call.next_events()] == ["accepted"]


def test_transfer_needs_an_answered_call():
    call, _ = answered_call()
    call.hangup(1.0)
    with pytest.raises(RuntimeError, match="answered"):
        call.transfer(AGENT, 2.0)


# -- a transfer on an inbound call's dialog (the UAS side) -----------------------------------------------
def test_blind_transfer_on_an_inbound_dialog():
    invite = parse_message(sipmsg.invite(call_id="in-1"))
    dialog = Dialog.from_invite(invite, "ourtag", ("10.0.0.5", 5060))
    job = BlindTransfer(dialog, AGENT, "sip:1000@192.0.2.1", "192.0.2.1:5060", "<sip:1000@192.0.2.1:5060>",
                        digest=DigestClient("", ""))
    job.start(0.0)
    (data,) = job.take_outbox()
    refer = parse_message(data)
    assert refer.method == "REFER" and refer.uri == "sip:5551234@10.0.0.5:5060"
    assert NameAddr.parse(refer.headers.get("From")).tag == "ourtag"
    assert NameAddr.parse(refer.headers.get("To")).tag == "caller1"
    assert refer.headers.get("Referred-By") == "<sip:1000@192.0.2.1>"
    job.on_response(parse_message(response_for(refer, 202, "Accepted").serialize()), 0.1)
    frag = parse_message((
        b"NOTIFY sip:1000@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKx\r\n"
        b"From: <sip:5551234@10.0.0.5>;tag=caller1\r\nTo: <sip:1000@192.0.2.1>;tag=ourtag\r\nCall-ID: in-1\r\n"
        b"CSeq: 5 NOTIFY\r\nEvent: refer;id=%d\r\nSubscription-State: terminated\r\n"
        b"Content-Type: message/sipfrag\r\nContent-Length: 16\r\n\r\nSIP/2.0 200 OK\r\n") % refer.cseq[0])
    assert job.on_notify(frag, 0.5).status == 200
    assert [e.kind for e in job.events] == ["accepted", "succeeded"] and job.outcome == "succeeded"
    assert job.tx.state is State.COMPLETED and not job.done
    job.handle_timer(0.1 + 5.0)  # Timer K
    assert job.done


# -- refusing an incoming REFER ---------------------------------------------------------------------------
def test_refer_inside_an_outbound_call_is_refused_405():
    call, _ = answered_call()
    resp = in_dialog(call, "REFER", 1, 1.0, extra="Refer-To: <sip:x@y>\r\n")
    assert resp.status == 405 and "REFER" not in resp.headers.get("Allow") and call.phase == "established"


@pytest.mark.parametrize("body,expected", [
    (b"SIP/2.0 200 OK\r\n", (200, "OK")),
    (b"\r\nSIP/2.0 183 Session Progress\r\nContent-Type: application/sdp\r\n\r\nv=0", (183, "Session Progress")),
    (b"SIP/2.0 503", (503, "")),
])
def test_parse_sipfrag_status(body, expected):
    assert parse_sipfrag_status(body) == expected


@pytest.mark.parametrize("body", [b"", b"INVITE sip:a@b SIP/2.0\r\n", b"SIP/2.0 99 Low\r\n", b"SIP/3.0 200 OK"])
def test_parse_sipfrag_status_refuses_what_is_not_a_status_line(body):
    with pytest.raises(ValueError):
        parse_sipfrag_status(body)


def test_remote_bye_during_a_transfer_then_the_final_notify():
    """RFC 5589 flows: a transferee may hang up on us before its last NOTIFY; the outcome still arrives."""
    call, _, refer, _ = start_transfer()
    reply(call, refer, 202, 1.1)
    assert in_dialog(call, "BYE", 1, 2.0, branch="z9hG4bKbye").status == 200
    assert notify(call, "SIP/2.0 200 OK\r\n", 2, 2.1, state="terminated").status == 200
    events = call.next_events()
    assert [e.kind for e in events] == ["accepted", "ended", "succeeded"]
    assert events[1].reason == "remote-bye" and call.outcome == "ended"
    assert requests(call) == []  # no BYE of ours: the dialog is already gone


def test_notify_without_a_transfer_is_481():
    call, _ = answered_call()
    assert notify(call, "SIP/2.0 200 OK\r\n", 1, 1.0).status == 481


def test_notify_event_id_must_name_our_refer():
    call, _, refer, _ = start_transfer()
    reply(call, refer, 202, 1.1)
    assert notify(call, "SIP/2.0 200 OK\r\n", 1, 2.0, event="refer;id=99").status == 481
    assert [e.kind for e in call.next_events()] == ["accepted"]
    sent: list = []
    assert notify(call, "SIP/2.0 200 OK\r\n", 2, 2.1, event=f"refer;id={refer.cseq[0]}", also_sent=sent).status == 200
    assert [e.kind for e in call.next_events()] == ["succeeded", "ended"] and [m.method for m in sent] == ["BYE"]
