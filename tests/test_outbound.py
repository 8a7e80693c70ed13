"""The outbound-call UAC and the INVITE client transaction, driven with injected time and bytes.

Every message the UAC sends is parsed back with our own parser and its fields checked;
the far end is played by ``tests/uacpeer.py`` (and by our own DigestAuthenticator for challenges).
"""

from __future__ import annotations

import pytest

from telephony.sip.auth import DigestAuthenticator, parse_digest
from telephony.sip.digest_client import DigestClient
from telephony.sip.invite_client import InviteClientTransaction, Timer
from telephony.sip.message import Headers, Request, Response, parse_message, response_for
from telephony.sip.outbound import OutboundCall
from telephony.sip.uac import build_offer, hop_address
from telephony.sip.sdp import parse_sdp
from telephony.sip.transaction import State, TuEvent
from telephony.sip.uri import NameAddr, Via

from .uacpeer import FAR_CONTACT, TARGET, answered_call, config, drain, in_dialog, ok, reply, requests


def run_until(call: OutboundCall, until: float) -> list[float]:
    """Fire every timer due up to ``until``; returns the times they fired at."""
    fired = []
    while (when := call.deadline()) is not None and when <= until:
        call.handle_timer(when)
        fired.append(when)
    return fired


def kinds(call: OutboundCall) -> list[str]:
    return [e.kind for e in call.next_events()]


# -- the INVITE ------------------------------------------------------------------------------------
def test_invite_carries_an_offer_of_pcmu_pcma_and_telephone_event():
    call = OutboundCall(config(from_display="Clinic"))
    call.start(0.0)
    ((invite, send),) = drain(call)
    assert isinstance(invite, Request) and invite.method == "INVITE" and invite.uri == TARGET
    assert send.uri == TARGET and send.addr is None
    via = Via.parse(invite.headers.get("Via"))
    assert via.transport == "UDP" and via.branch.startswith("z9hG4bK") and "rport" in via.params
    frm = NameAddr.parse(invite.headers.get("From"))
    assert frm.uri == "sip:tts@example.com" and frm.display == "Clinic" and frm.tag
    assert NameAddr.parse(invite.headers.get("To")).tag is None
    assert invite.cseq == (1, "INVITE") and invite.call_id == call.call_id
    assert NameAddr.parse(invite.headers.get("Contact")).uri == "sip:tts@192.0.2.1:5060"
    assert invite.headers.get("Content-Type") == "application/sdp"
    sdp = parse_sdp(invite.body)
    (audio,) = sdp.media
    assert (audio.media, audio.port, audio.proto, audio.formats) == ("audio", 30000, "RTP/AVP", ["0", "8", "101"])
    assert audio.rtpmap == {0: ("PCMU", 8000), 8: ("PCMA", 8000), 101: ("telephone-event", 8000)}
    assert audio.fmtp[101] == "0-16" and audio.ptime == 20 and audio.direction == "sendrecv"
    assert sdp.connection == "192.0.2.1"


def test_build_offer_follows_codec_order_and_refuses_other_codecs():
    sdp = parse_sdp(build_offer("2001:db8::1", 4000, 1, ("PCMA",), None))
    assert sdp.media[0].formats == ["8"] and sdp.connection == "2001:db8::1"
    with pytest.raises(ValueError, match="PCMU and/or PCMA"):
        build_offer("192.0.2.1", 4000, 1, ("G729",))


def test_outbound_proxy_is_the_first_hop_and_a_preloaded_route():
    call = OutboundCall(config(outbound_proxy="sip:proxy.example:5080;lr"))
    call.start(0.0)
    ((invite, send),) = drain(call)
    assert invite.headers.get_all("Route") == ["<sip:proxy.example:5080;lr>"]
    assert send.uri == "sip:proxy.example:5080;lr" and invite.uri == TARGET


# -- progress and answer ---------------------------------------------------------------------------
def test_trying_ringing_answer_ack_and_bye():
    call = OutboundCall(config())
    call.start(0.0)
    (invite,) = requests(call)
    reply(call, invite, 100, 0.05)
    reply(call, invite, 180, 0.1)
    reply(call, invite, 183, 0.2, body=b"v=0\r\n")  # early media: ignored, no second "ringing"
    assert kinds(call) == ["trying", "ringing"]
    assert requests(call) == []  # no retransmission after a provisional (Timer A stopped)
    assert run_until(call, 10.0) == []  # nothing due while ringing before the ring timeout
    ok(call, invite, 3.0, record_route=["<sip:edge2.example;lr>", "<sip:edge1.example;lr>"])
    (event,) = call.next_events()
    assert event.kind == "answered" and event.status == 200
    assert event.answer.codec == "PCMA" and event.answer.payload_type == 8
    assert (event.answer.remote_host, event.answer.remote_port) == ("198.51.100.7", 42000)
    assert event.answer.dtmf_payload_type == 101
    ((ack, send),) = drain(call)
    assert ack.method == "ACK" and ack.uri == FAR_CONTACT and ack.cseq == (1, "ACK")
    assert ack.headers.get_all("Route") == ["<sip:edge1.example;lr>", "<sip:edge2.example;lr>"]
    assert send.uri == "sip:edge1.example;lr"
    assert Via.parse(ack.headers.get("Via")).branch != Via.parse(invite.headers.get("Via")).branch
    assert NameAddr.parse(ack.headers.get("To")).tag == "far1"
    assert ack.headers.get("From") == invite.headers.get("From") and ack.body == b""

    # The 200 is retransmitted (our ACK was lost): the very same ACK goes again, no new event.
    ok(call, invite, 3.5, record_route=["<sip:edge2.example;lr>", "<sip:edge1.example;lr>"])
    ((again, _),) = drain(call)
    assert again.serialize() == ack.serialize() and call.next_events() == []

    call.hangup(10.0)
    (bye,) = requests(call, "BYE")
    assert bye.cseq == (2, "BYE") and bye.uri == FAR_CONTACT
    assert NameAddr.parse(bye.headers.get("To")).tag == "far1"
    assert NameAddr.parse(bye.headers.get("From")).tag == NameAddr.parse(invite.headers.get("From")).tag
    (ended,) = call.next_events()
    assert (ended.kind, ended.reason) == ("ended", "local-bye")
    reply(call, bye, 200, 10.1)
    assert not call.finished  # the INVITE transaction absorbs 2xx retransmissions for 64*T1
    run_until(call, 60.0)
    assert call.finished and call.deadline() is None


def test_pcmu_answer_and_remote_bye_with_retransmission():
    call, invite = answered_call()
    resp = in_dialog(call, "BYE", 1, 5.0)
    assert resp.status == 200 and resp.cseq == (1, "BYE")
    (ended,) = call.next_events()
    assert (ended.kind, ended.reason) == ("ended", "remote-bye")
    again = in_dialog(call, "BYE", 1, 5.5)  # a retransmission gets the same answer, no new event
    assert again.status == 200 and call.next_events() == []
    run_until(call, 60.0)
    assert call.finished


def test_request_for_another_dialog_gets_481():
    call, _ = answered_call()
    assert in_dialog(call, "BYE", 1, 1.0, to_tag="not-ours").status == 481
    assert call.outcome is None


def test_unusable_sdp_answer_is_acked_then_ended():
    call = OutboundCall(config())
    call.start(0.0)
    (invite,) = requests(call)
    body = b"v=0\r\no=x 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\n"
    ok(call, invite, 0.5, body=body)
    assert [m.method for m in requests(call)] == ["ACK", "BYE"]
    (event,) = call.next_events()
    assert event.kind == "failed" and event.status == 200 and "SDP" in event.reason


def test_second_fork_2xx_is_acked_and_sent_a_bye():
    call, invite = answered_call()
    ok(call, invite, 0.3, tag="fork2")
    sent = requests(call)
    assert [m.method for m in sent] == ["ACK", "BYE"]
    assert all(NameAddr.parse(m.headers.get("To")).tag == "fork2" for m in sent)
    assert call.phase == "established" and call.dialog.remote_tag == "far1" and call.next_events() == []
    ok(call, invite, 0.4, tag="fork2")  # its retransmission: ACKed again, no second BYE
    assert [m.method for m in requests(call)] == ["ACK"]


# -- final failures ----------------------------------------------------------------------------------
@pytest.mark.parametrize("status,kind", [
    (486, "busy"), (600, "busy"), (603, "declined"), (404, "not_found"), (604, "not_found"),
    (480, "failed"), (500, "failed"), (302, "failed"), (488, "failed"),
])
def test_final_failure_maps_to_an_outcome_and_is_acked_by_the_transaction(status, kind):
    call = OutboundCall(config())
    call.start(0.0)
    (invite,) = requests(call)
    reply(call, invite, 180, 0.1)
    resp = reply(call, invite, status, 1.0)
    assert kinds(call) == ["ringing", kind]
    assert call.outcome == kind
    ((ack, send),) = drain(call)
    # §17.1.1.3: same branch as the INVITE, To with the response's tag, CSeq number of the INVITE
    assert ack.method == "ACK" and ack.uri == invite.uri and send.uri == TARGET
    assert ack.headers.get_all("Via") == invite.headers.get_all("Via")
    assert ack.headers.get("To") == resp.headers.get("To") and ack.cseq == (1, "ACK")
    reply(call, invite, status, 1.5)  # retransmitted final response: ACK replayed, no second outcome
    assert [m.method for m in requests(call)] == ["ACK"] and call.next_events() == []
    run_until(call, 40.0)  # Timer D (32 s over UDP)
    assert call.finished


def test_timer_b_without_any_response_is_unreachable():
    call = OutboundCall(config(ring_timeout_s=60.0))
    call.start(0.0)
    assert len(requests(call)) == 1
    fired = run_until(call, 40.0)
    # Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 (doubling, no T2 cap for INVITE), then Timer B at 32.
    assert fired == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 32.0]
    assert len(requests(call, "INVITE")) == 6
    (event,) = call.next_events()
    assert (event.kind, event.status) == ("unreachable", 408)
    assert call.finished


def test_over_tcp_there_are_no_retransmissions_but_timer_b_still_runs():
    call = OutboundCall(config(transport="TCP", ring_timeout_s=60.0))
    call.start(0.0)
    (invite,) = requests(call)
    assert Via.parse(invite.headers.get("Via")).transport == "TCP"
    assert run_until(call, 40.0) == [32.0] and requests(call) == []
    assert kinds(call) == ["unreachable"]


def test_transport_error_is_unreachable():
    call = OutboundCall(config())
    call.start(0.0)
    drain(call)
    call.transport_error(0.01)
    (event,) = call.next_events()
    assert (event.kind, event.status) == ("unreachable", 503)
    assert call.finished and call.deadline() is None


# -- digest ------------------------------------------------------------------------------------------
def _challenged(status: int, algorithms=("SHA-256", "MD5")):
    far = DigestAuthenticator("trunk.example", {"acct": "s3cret"}, algorithms=algorithms)
    call = OutboundCall(config(username="acct", password="s3cret"))
    call.start(0.0)
    (first,) = requests(call)
    challenges = far.challenges(0.1)
    if status == 407:
        challenges = [("Proxy-Authenticate", value) for _, value in challenges]
    resp = reply(call, first, status, 0.1, extra=challenges)
    return far, call, first, resp


@pytest.mark.parametrize("status,header", [(401, "Authorization"), (407, "Proxy-Authorization")])
def test_digest_challenge_is_answered_and_the_call_goes_on(status, header):
    far, call, first, resp = _challenged(status)
    sent = drain(call)
    ack, retry = (m for m, _ in sent)
    assert ack.method == "ACK" and Via.parse(ack.headers.get("Via")).branch == Via.parse(first.headers.get("Via")).branch
    assert ack.headers.get("To") == resp.headers.get("To")
    assert retry.method == "INVITE" and retry.cseq == (2, "INVITE") and retry.call_id == first.call_id
    assert retry.headers.get("From") == first.headers.get("From")
    assert Via.parse(retry.headers.get("Via")).branch != Via.parse(first.headers.get("Via")).branch
    assert parse_sdp(retry.body).media[0].formats == ["0", "8", "101"]
    (credentials,) = retry.headers.get_all(header)
    params = parse_digest(credentials)
    assert params["algorithm"] == "SHA-256" and params["nc"] == "00000001" and params["uri"] == TARGET
    # The far end (our own verifier) accepts the answer.
    probe = Request("INVITE", retry.uri, Headers([("Authorization", credentials)]))
    assert far.check(probe, 0.2) == (True, False)
    assert call.next_events() == []  # a challenge is not progress
    reply(call, retry, 180, 0.3)
    ok(call, retry, 0.4)
    assert kinds(call) == ["ringing", "answered"]
    (ack2,) = requests(call, "ACK")
    assert ack2.cseq == (2, "ACK") and ack2.headers.get(header) == credentials  # §13.2.2.4: same credentials


def test_md5_only_challenge_gets_an_md5_answer():
    far, call, _, _ = _challenged(401, algorithms=("MD5",))
    (retry,) = requests(call, "INVITE")
    params = parse_digest(retry.headers.get("Authorization"))
    assert params["algorithm"] == "MD5"
    probe = Request("INVITE", retry.uri, Headers([("Authorization", retry.headers.get("Authorization"))]))
    assert far.check(probe, 0.2) == (True, False)


def test_second_challenge_means_wrong_credentials():
    far, call, _, _ = _challenged(401)
    (retry,) = requests(call, "INVITE")
    reply(call, retry, 401, 0.3, extra=far.challenges(0.3))
    (event,) = call.next_events()
    assert (event.kind, event.status) == ("failed", 401)
    assert [m.method for m in requests(call)] == ["ACK"]


def test_challenge_without_credentials_fails():
    far = DigestAuthenticator("trunk.example", {"acct": "s3cret"})
    call = OutboundCall(config())
    call.start(0.0)
    (invite,) = requests(call)
    reply(call, invite, 407, 0.1, extra=[("Proxy-Authenticate", v) for _, v in far.challenges(0.1)])
    assert [(e.kind, e.status) for e in call.next_events()] == [("failed", 407)]


def test_digest_client_counts_nonce_uses_and_allows_a_stale_retry():
    client = DigestClient("acct", "pw")
    challenge = 'Digest realm="r", nonce="abc", algorithm=MD5, qop="auth"'
    resp = Response(401, "Unauthorized", Headers([("WWW-Authenticate", challenge)]))
    (first,) = client.authorize(resp, "INVITE", "sip:x@y")
    assert parse_digest(first[1])["nc"] == "00000001"
    assert client.authorize(resp, "INVITE", "sip:x@y") is None  # same realm again: refused credentials
    stale = Response(401, "Unauthorized", Headers([("WWW-Authenticate", challenge + ", stale=true")]))
    (second,) = client.authorize(stale, "INVITE", "sip:x@y")
    assert parse_digest(second[1])["nc"] == "00000002"
    client.reset()
    no_qop = Response(401, "", Headers([("WWW-Authenticate", 'Digest realm="r2", nonce="n2", opaque="o"')]))
    kept, third = client.authorize(no_qop, "BYE", "sip:x@y")  # realm "r" is remembered and answered too
    assert parse_digest(kept[1])["realm"] == "r" and parse_digest(kept[1])["nc"] == "00000003"
    params = parse_digest(third[1])
    assert params["realm"] == "r2"
    assert "qop" not in params and params["opaque"] == "o" and params["algorithm"] == "MD5"


# -- ring timeout, CANCEL and the races ---------------------------------------------------------------
def test_no_answer_sends_cancel_after_the_ring_timeout_then_487():
    call = OutboundCall(config(ring_timeout_s=5.0))
    call.start(0.0)
    (invite,) = requests(call)
    reply(call, invite, 180, 0.2)
    assert kinds(call) == ["ringing"]
    assert run_until(call, 5.0) == [5.0]
    (cancel,) = requests(call)
    assert cancel.method == "CANCEL" and cancel.uri == invite.uri and cancel.cseq == (1, "CANCEL")
    assert cancel.headers.get_all("Via") == invite.headers.get_all("Via")  # §9.1: same branch
    assert cancel.headers.get("To") == invite.headers.get("To") and cancel.headers.get("From") == invite.headers.get("From")
    assert cancel.body == b""
    reply(call, cancel, 200, 5.1)
    resp = reply(call, invite, 487, 5.2)
    (event,) = call.next_events()
    assert (event.kind, event.status) == ("no_answer", 487)
    (ack,) = requests(call)
    assert ack.method == "ACK" and ack.headers.get("To") == resp.headers.get("To")
    run_until(call, 60.0)
    assert call.finished


def test_cancel_waits_for_a_provisional_response():
    call = OutboundCall(config(ring_timeout_s=2.0))
    call.start(0.0)
    drain(call)
    run_until(call, 2.0)
    assert [m.method for m in requests(call)] == ["INVITE", "INVITE"]  # Timer A only: no CANCEL yet (§9.1)
    reply(call, call.invite, 100, 2.5)
    (cancel,) = requests(call)
    assert cancel.method == "CANCEL"
    assert kinds(call) == ["trying"]


def cancelled_after_ringing() -> tuple[OutboundCall, Request, Request]:
    """A call that rang from 0.2 s and was CANCELled at its 5 s ring timeout: (call, INVITE, CANCEL)."""
    call = OutboundCall(config(ring_timeout_s=5.0))
    call.start(0.0)
    (invite,) = requests(call)
    reply(call, invite, 180, 0.2)
    run_until(call, 5.0)
    (cancel,) = requests(call)
    return call, invite, cancel


def test_200_crossing_our_cancel_is_acked_and_ended_with_bye():
    call, invite, cancel = cancelled_after_ringing()
    ok(call, invite, 5.01)  # the callee picked up just as we gave up
    reply(call, cancel, 200, 5.02)
    ack, bye = requests(call)
    assert ack.method == "ACK" and ack.cseq == (1, "ACK") and ack.uri == FAR_CONTACT
    assert bye.method == "BYE" and bye.cseq == (2, "BYE") and NameAddr.parse(bye.headers.get("To")).tag == "far1"
    assert [(e.kind, e.status) for e in call.next_events()] == [("ringing", 180), ("no_answer", 200)]
    reply(call, bye, 200, 5.1)
    run_until(call, 60.0)
    assert call.finished


def test_cancel_without_final_response_gives_up_after_64_t1():
    call, _, cancel = cancelled_after_ringing()
    reply(call, cancel, 200, 5.1)
    run_until(call, 36.9)
    assert call.outcome is None
    run_until(call, 37.0)
    assert [(e.kind, e.status) for e in call.next_events()] == [("ringing", 180), ("no_answer", 408)]
    run_until(call, 80.0)
    assert call.finished


def test_hangup_before_answer_is_cancelled():
    call = OutboundCall(config())
    call.start(0.0)
    (invite,) = requests(call)
    reply(call, invite, 183, 0.2)
    call.hangup(1.0)
    (cancel,) = requests(call)
    assert cancel.method == "CANCEL"
    reply(call, invite, 487, 1.1)
    assert [e.kind for e in call.next_events()] == ["ringing", "cancelled"]


# -- the INVITE client transaction on its own ----------------------------------------------------------
def _invite() -> Request:
    call = OutboundCall(config())
    call.start(0.0)
    (invite,) = requests(call)
    return invite


def test_transaction_over_reliable_transport_has_no_timer_a_and_zero_timer_d():
    invite = _invite()
    tx = InviteClientTransaction.start("k", invite, 0.0, reliable=True)
    assert set(tx.timers) == {Timer.B}
    resp = parse_message(response_for(invite, 486, to_tag="t").serialize())
    tx.on_response(resp, 1.0)
    assert tx.state is State.COMPLETED and tx.deadline() == 1.0
    assert tx.handle_timers(1.0) == [TuEvent.TERMINATED] and tx.terminated


def test_transaction_accepted_state_passes_2xx_retransmissions_until_timer_m():
    invite = _invite()
    tx = InviteClientTransaction.start("k", invite, 0.0)
    resp = parse_message(response_for(invite, 200, to_tag="t").serialize())
    assert [e.value for e in tx.on_response(resp, 0.1)] == ["response"]
    assert tx.state is State.ACCEPTED and tx.deadline() == pytest.approx(32.1)
    assert [e.value for e in tx.on_response(resp, 0.6)] == ["response"]
    assert tx.handle_timers(32.1) == [TuEvent.TERMINATED]
    assert tx.on_response(resp, 33.0) == []  # after Timer M: nothing reaches the TU


def _far_request(call: OutboundCall, method: str, cseq: int, now: float, branch: str, body: bytes = b"",
                 extra: str = "") -> list:
    """A request of the callee inside the dialog; what we sent back (parsed, with its Send)."""
    dialog = call.dialog
    assert dialog is not None
    call.receive(parse_message((
        f"{method} sip:tts@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5070;branch={branch}\r\n"
        f"From: {dialog.remote_party}\r\nTo: {dialog.local_party}\r\nCall-ID: {call.call_id}\r\n"
        f"CSeq: {cseq} {method}\r\nContact: <{FAR_CONTACT}>\r\n{extra}"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n").encode() + body), now, ("198.51.100.7", 5070))
    return drain(call)


HOLD = (b"v=0\r\no=far 1 2 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
        b"m=audio 40002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendonly\r\n")


def test_in_dialog_reinvite_is_reported_and_answered_with_our_sdp():
    """A re-INVITE in the answered call: 100 at once, a SessionUpdate for the call table, and the
    200 it answers with (our SDP, Contact); the 200 is retransmitted until its ACK (a transaction of
    its own, matched by CSeq)."""
    call, _ = answered_call()
    out = _far_request(call, "INVITE", 2, 1.0, "z9hG4bKre1", HOLD,
                       "Session-Expires: 1800;refresher=uac\r\nSupported: timer\r\n")
    assert [m.status for m, _ in out] == [100]
    (update,) = call.next_events()
    assert update.method == "INVITE" and update.offer.media[0].direction == "sendonly"
    assert update.session_expires == 1800
    call.answer_update(b"v=0\r\n", 1.01)
    assert call.session_expires == 1800
    ((ok200, send),) = drain(call)
    assert ok200.status == 200 and ok200.cseq == (2, "INVITE") and ok200.body == b"v=0\r\n"
    assert send.addr == ("198.51.100.7", 5070)
    assert ok200.headers.get("Content-Type") == "application/sdp" and ok200.headers.get("Contact")
    assert ok200.headers.get("Session-Expires") == "1800;refresher=uac"
    assert call.deadline() == pytest.approx(1.51)  # Timer G: until the ACK
    assert _far_request(call, "ACK", 2, 1.2, "z9hG4bKack2") == []
    call.handle_timer(1.51)
    assert drain(call) == []  # no retransmission after the ACK
    options = in_dialog(call, "OPTIONS", 3, 2.0, branch="z9hG4bKopt")
    assert options.status == 200 and "UPDATE" in options.headers.get_all("Allow")
    assert call.phase == "established" and call.next_events() == []


def test_in_dialog_offers_refused_the_way_the_ua_refuses_them():
    """An offer while one is open: 500 with Retry-After (RFC 3311 §5.2); unusable SDP: 488 (ACKed on its branch); an old CSeq: 500;
    a session interval under Min-SE: 422; one that is not a number: 400. None of them reaches the call table."""
    call, _ = answered_call()
    _far_request(call, "UPDATE", 2, 1.0, "z9hG4bKu1", HOLD)
    assert len(call.next_events()) == 1
    ((glare, _),) = _far_request(call, "UPDATE", 3, 1.1, "z9hG4bKu2", HOLD)
    assert glare.status == 500 and glare.headers.get("Retry-After")
    call.answer_update(None, 1.2, 488)
    ((refused, _),) = drain(call)
    assert refused.status == 488 and refused.cseq == (2, "UPDATE")
    out = _far_request(call, "INVITE", 4, 2.0, "z9hG4bKbad", b"not sdp")
    assert [m.status for m, _ in out] == [100, 488]
    assert _far_request(call, "ACK", 4, 2.1, "z9hG4bKbad") == []
    ((old, _),) = _far_request(call, "UPDATE", 3, 3.0, "z9hG4bKold", HOLD)
    assert old.status == 500
    ((small, _),) = _far_request(call, "UPDATE", 5, 4.0, "z9hG4bKse", HOLD,
                                 "Session-Expires: 30\r\nSupported: timer\r\n")
    assert small.status == 422 and small.headers.get("Min-SE") == "90"
    out = _far_request(call, "INVITE", 6, 5.0, "z9hG4bKsex", HOLD, "Session-Expires: abc\r\nSupported: timer\r\n")
    assert [m.status for m, _ in out] == [100, 400]  # a final answer, not a transaction left open
    assert call.next_events() == [] and call.phase == "established"


def test_each_refresh_agrees_the_session_timer_anew():
    """RFC 4028 (as the UA): a later re-offer without Session-Expires is answered without it and
    turns the timer off (the SessionUpdate says so to the call table); it is not carried over."""
    call, _ = answered_call()
    _far_request(call, "INVITE", 2, 1.0, "z9hG4bKst1", HOLD, "Session-Expires: 1800;refresher=uac\r\n"
                 "Supported: timer\r\n")
    (update,) = call.next_events()
    call.answer_update(b"v=0\r\n", 1.0)
    ((ok, _),) = drain(call)
    assert update.session_expires == 1800 and ok.headers.get("Session-Expires") == "1800;refresher=uac"
    _far_request(call, "ACK", 2, 1.1, "z9hG4bKack")
    _far_request(call, "UPDATE", 3, 2.0, "z9hG4bKst2", HOLD)
    (update,) = call.next_events()
    call.answer_update(b"v=0\r\n", 2.0)
    ((ok, _),) = drain(call)
    assert update.session_expires is None and call.session_expires is None
    assert ok.status == 200 and ok.headers.get("Session-Expires") is None and ok.headers.get("Require") is None


def test_a_refresh_update_without_an_offer_is_answered_without_sdp():
    """A placed call's refresh UPDATE with no body: 200 with the timer, no SDP, no Content-Type
    (RFC 3311 §5.2), and the timer agreed anew as for any 200."""
    call, _ = answered_call()
    _far_request(call, "UPDATE", 2, 1.0, "z9hG4bKref", b"", "Session-Expires: 600;refresher=uac\r\n"
                 "Supported: timer\r\n")
    (update,) = call.next_events()
    assert update.offer is None and update.session_expires == 600
    call.answer_update(b"", 1.0)
    ((ok, _),) = drain(call)
    assert ok.status == 200 and ok.body == b"" and ok.headers.get("Content-Type") is None
    assert ok.headers.get("Session-Expires") == "600;refresher=uac" and call.session_expires == 600


def test_a_reoffer_requiring_an_unknown_option_is_420_and_the_call_stays():
    """RFC 3261 §8.2.2.3, through the UA's own check: 420 naming what we lack (not ``timer``), no
    SessionUpdate; the INVITE's transaction ends with its ACK and the call goes on."""
    call, _ = answered_call()
    _far_request(call, "UPDATE", 2, 0.5, "z9hG4bKse", HOLD, "Session-Expires: 1800;refresher=uac\r\nSupported: timer\r\n")
    call.next_events()
    call.answer_update(b"v=0\r\n", 0.5)
    drain(call)
    assert call.session_expires == 1800  # a timer agreed before: a refused request leaves it as it was
    out = _far_request(call, "INVITE", 3, 1.0, "z9hG4bKreq", HOLD, "Require: timer, foo\r\nSupported: timer\r\n"
                       "Session-Expires: 600\r\n")
    assert [m.status for m, _ in out] == [420] and out[0][0].headers.get("Unsupported") == "foo"
    assert _far_request(call, "ACK", 3, 1.1, "z9hG4bKreq") == []
    call.handle_timer(5.0)
    assert drain(call) == []  # ACKed: not sent again
    ((upd, _),) = _far_request(call, "UPDATE", 4, 5.2, "z9hG4bKreq2", HOLD, "Require: foo\r\n")
    assert upd.status == 420
    assert call.next_events() == [] and call.phase == "established" and call.session_expires == 1800
    _far_request(call, "UPDATE", 5, 6.0, "z9hG4bKok", HOLD)
    assert len(call.next_events()) == 1  # a later offer without it is taken


@pytest.mark.parametrize("field,value,message", [
    ("target", "tel:+15551234", "target: not a SIP URI"),
    ("from_uri", "sip:", "from_uri"),
    ("transport", "SCTP", "transport: must be UDP, TCP or TLS"),
    ("ring_timeout_s", 0, "ring_timeout_s"),
    ("codecs", ("OPUS",), "PCMU and/or PCMA"),
    ("from_display", "a\r\nVia: x", "from_display"),
    ("outbound_proxy", "proxy.example", "outbound_proxy"),
    ("media_port", 0, "media_port"),
    ("dtmf_payload_type", 8, "dtmf_payload_type"),
])
def test_bad_config_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        config(**{field: value})


def test_display_name_is_quoted_safely():
    call = OutboundCall(config(from_display='Dr "Who" \\ Clinic'))
    call.start(0.0)
    (invite,) = requests(call)
    assert NameAddr.parse(invite.headers.get("From")).uri == "sip:tts@example.com"
    assert invite.headers.get("From").startswith('"Dr \\"Who\\" \\\\ Clinic" <sip:tts@example.com>;tag=')


@pytest.mark.parametrize("uri,expected", [
    ("sip:+1555@198.51.100.7", ("198.51.100.7", 5060, "UDP")),
    ("sip:trunk.example:5080;transport=tcp", ("trunk.example", 5080, "TCP")),
    ("sips:trunk.example", ("trunk.example", 5061, "TLS")),
    ("sip:[2001:db8::5];lr", ("2001:db8::5", 5060, "UDP")),
])
def test_hop_address(uri, expected):
    assert hop_address(uri) == expected


def test_proxy_then_far_end_challenge_keeps_both_credentials():
    proxy = DigestAuthenticator("proxy.example", {"acct": "s3cret"})
    far = DigestAuthenticator("trunk.example", {"acct": "s3cret"})
    call = OutboundCall(config(username="acct", password="s3cret"))
    call.start(0.0)
    (first,) = requests(call)
    reply(call, first, 407, 0.1, extra=[("Proxy-Authenticate", v) for _, v in proxy.challenges(0.1)])
    (second,) = requests(call, "INVITE")
    reply(call, second, 401, 0.2, extra=far.challenges(0.2))
    (third,) = requests(call, "INVITE")
    assert third.cseq == (3, "INVITE")
    proxy_cred, = third.headers.get_all("Proxy-Authorization")
    far_cred, = third.headers.get_all("Authorization")
    assert parse_digest(proxy_cred)["nc"] == "00000002"  # the proxy's nonce, used a second time
    assert parse_digest(far_cred)["nc"] == "00000001"
    # Both verifiers accept, and the proxy sees a growing nonce count (no replay).
    assert proxy.check(Request("INVITE", TARGET, Headers([("Authorization", second.headers.get("Proxy-Authorization"))])), 0.3) == (True, False)
    assert proxy.check(Request("INVITE", TARGET, Headers([("Authorization", proxy_cred)])), 0.3) == (True, False)
    assert far.check(Request("INVITE", TARGET, Headers([("Authorization", far_cred)])), 0.3) == (True, False)


def test_a_bye_while_a_reoffer_is_open_ends_it_with_487():
    """RFC 3261 §15.1.2: the open re-INVITE is answered 487, so its transaction ends with the call."""
    call, _ = answered_call()
    _far_request(call, "INVITE", 2, 1.0, "z9hG4bKre2", HOLD)
    assert len(call.next_events()) == 1
    out = _far_request(call, "BYE", 3, 1.1, "z9hG4bKbye")
    assert sorted((m.status, m.cseq[1]) for m, _ in out) == [(200, "BYE"), (487, "INVITE")]
    assert _far_request(call, "ACK", 2, 1.2, "z9hG4bKre2") == []
    while (when := call.deadline()) is not None:
        call.handle_timer(when)
    assert call.outcome == "ended" and call.finished
