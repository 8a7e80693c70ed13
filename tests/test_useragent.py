"""The sans-IO user agent driven with bytes and a fake clock: no sockets, no sleeps."""

import pytest

from telephony.sip import CallConfirmed, CallEnded, IncomingCall, Request, Response, parse_message
from telephony.sip.transaction import T1
from telephony.sip.useragent import UserAgent, UserAgentConfig
from tests.sipmsg import OFFER, invite, request

CALLER = ("10.0.0.5", 5062)


@pytest.fixture
def ua():
    return UserAgent(UserAgentConfig("192.0.2.1", 5060))


def sent(ua):
    return [(parse_message(d), addr) for d, addr in ua.datagrams_to_send()]


def statuses(ua):
    return [m.status for m, _ in sent(ua) if isinstance(m, Response)]


def start_call(ua, now=0.0, **kw):
    ua.receive_datagram(invite(**kw), CALLER, now)
    events = ua.next_events()
    assert len(events) == 1 and isinstance(events[0], IncomingCall)
    return events[0]


def test_invite_gets_100_at_once_and_an_incoming_call(ua):
    ua.receive_datagram(invite(), CALLER, 0.0)
    out = sent(ua)
    assert [m.status for m, _ in out] == [100]
    assert out[0][1] == CALLER  # to the source address
    (ev,) = ua.next_events()
    assert isinstance(ev, IncomingCall)
    assert ev.dialed == "1000" and ev.caller == "5551234"


def test_rport_and_received_are_stamped_on_the_response_via(ua):
    ua.receive_datagram(invite(), CALLER, 0.0)
    (resp, addr), = sent(ua)
    via = resp.headers.get("Via")
    assert "rport=5062" in via and "received=10.0.0.5" in via
    assert addr == CALLER


def test_answer_retransmits_until_ack_then_confirms(ua):
    ev = start_call(ua)
    sent(ua)
    ua.answer(ev.call_id, b"v=0\r\n", 0.0)
    (ok, _), = sent(ua)
    assert ok.status == 200
    assert ok.headers.get("Content-Type") == "application/sdp"
    assert ";tag=" in ok.headers.get("To")
    assert ok.headers.get("Contact") == "<sip:sip-tts@192.0.2.1:5060>"
    times = []
    now = 0.0
    while now < 7.5:
        now = ua.get_timer()
        ua.handle_timer(now)
        times += [now for _ in sent(ua)]
    assert times == [0.5, 1.5, 3.5, 7.5]  # Timer G: T1 doubling
    to_tag = ok.headers.get("To").split("tag=")[1]
    ua.receive_datagram(request("ACK", cseq=1, to_tag=to_tag), CALLER, now)
    assert ua.next_events() == [CallConfirmed(ev.call_id)]
    assert ua.get_timer() == now + 64 * T1  # only Timer L is left: no more retransmissions
    ua.handle_timer(now + 64 * T1)
    assert sent(ua) == [] and ua.get_timer() is None


def test_no_ack_tears_the_call_down_after_64_t1(ua):
    ev = start_call(ua)
    ua.answer(ev.call_id, b"v=0\r\n", 0.0)
    while (t := ua.get_timer()) is not None:
        ua.handle_timer(t)
    assert ua.next_events() == [CallEnded(ev.call_id, "ack-timeout")]
    assert t is None and ua.active_calls == 0
    assert ua._calls == {} and ua._transactions == {}


def test_retransmitted_invite_gets_the_last_response_and_no_second_call(ua):
    data = invite(branch="z9hG4bKsame")
    ua.receive_datagram(data, CALLER, 0.0)
    (ev,) = ua.next_events()
    sent(ua)
    ua.receive_datagram(data, CALLER, 0.2)
    assert statuses(ua) == [100]
    ua.answer(ev.call_id, b"v=0\r\n", 0.3)
    sent(ua)
    ua.receive_datagram(data, CALLER, 0.4)
    assert statuses(ua) == [200]
    assert ua.next_events() == []


def test_same_call_id_new_branch_is_a_loop(ua):
    start_call(ua)
    sent(ua)
    ua.receive_datagram(invite(), CALLER, 0.1)
    assert statuses(ua) == [482]


def test_cancel_gets_200_and_the_invite_487(ua):
    ev = start_call(ua, branch="z9hG4bKc1")
    sent(ua)
    ua.receive_datagram(request("CANCEL", branch="z9hG4bKc1", cseq=1), CALLER, 0.5)
    out = sent(ua)
    assert sorted((m.status, m.cseq[1]) for m, _ in out) == [(200, "CANCEL"), (487, "INVITE")]
    assert ua.next_events() == [CallEnded(ev.call_id, "cancel")]
    ua.receive_datagram(request("ACK", branch="z9hG4bKc1", cseq=1), CALLER, 0.6)
    assert ua.next_events() == []  # the ACK for the 487 is absorbed


def test_cancel_for_unknown_transaction_is_481(ua):
    ua.receive_datagram(request("CANCEL", cseq=1), CALLER, 0.0)
    assert statuses(ua) == [481]


def test_bye_ends_the_call(ua):
    ev = start_call(ua)
    ua.answer(ev.call_id, b"v=0\r\n", 0.0)
    sent(ua)
    to_tag = ua._calls[ev.call_id].dialog.local_tag
    ua.receive_datagram(request("ACK", cseq=1, to_tag=to_tag), CALLER, 0.1)
    ua.next_events()
    ua.receive_datagram(request("BYE", cseq=2, to_tag=to_tag), CALLER, 1.0)
    assert statuses(ua) == [200]
    assert ua.next_events() == [CallEnded(ev.call_id, "remote-bye")]
    assert ua.active_calls == 0


def test_bye_for_unknown_dialog_is_481(ua):
    ua.receive_datagram(request("BYE", to_tag="nope"), CALLER, 0.0)
    assert statuses(ua) == [481]


def test_options_lists_allow_accept_supported(ua):
    ua.receive_datagram(request("OPTIONS"), CALLER, 0.0)
    (resp, _), = sent(ua)
    assert resp.status == 200
    assert "INVITE" in resp.headers.get_all("Allow") and "BYE" in resp.headers.get_all("Allow")
    assert resp.headers.get("Accept") == "application/sdp"
    assert "Supported" in resp.headers


def test_options_503_when_draining(ua):
    ua.draining = True
    ua.receive_datagram(request("OPTIONS"), CALLER, 0.0)
    (resp, _), = sent(ua)
    assert resp.status == 503 and resp.headers.get("Retry-After")


def test_unknown_method_501_known_unserved_405_with_allow(ua):
    ua.receive_datagram(request("FOO"), CALLER, 0.0)
    ua.receive_datagram(request("REGISTER"), CALLER, 0.0)
    out = [m for m, _ in sent(ua)]
    assert [m.status for m in out] == [501, 405]
    assert "INVITE" in out[1].headers.get_all("Allow")


def test_malformed_request_gets_400_and_garbage_is_dropped(ua):
    bad = invite().replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE")
    ua.receive_datagram(bad, CALLER, 0.0)
    (data, addr), = ua.datagrams_to_send()
    assert data.startswith(b"SIP/2.0 400 ") and addr == CALLER
    ua.receive_datagram(b"\x00\xffgarbage", CALLER, 0.0)
    ua.receive_datagram(b"\r\n\r\n", CALLER, 0.0)
    assert sent(ua) == [] and ua.next_events() == []


def test_bad_header_value_is_400_not_a_traceback(ua):
    ua.receive_datagram(invite().replace(b"Via: SIP/2.0/UDP", b"Via: HTTP/1.1"), CALLER, 0.0)
    assert statuses(ua) == [400]


def test_invite_without_sdp_is_488_and_unsupported_require_420(ua):
    ua.receive_datagram(invite(sdp=None), CALLER, 0.0)
    ua.receive_datagram(invite(call_id="c2", extra="Require: 100rel\r\n"), CALLER, 0.0)
    assert statuses(ua) == [100, 488, 420]


def test_reject_sends_final_with_to_tag(ua):
    ev = start_call(ua)
    sent(ua)
    ua.reject(ev.call_id, 404, 0.0)
    (resp, _), = sent(ua)
    assert resp.status == 404 and ";tag=" in resp.headers.get("To")


def test_hangup_sends_bye_along_the_route_set(ua):
    rr = "Record-Route: <sip:proxy2.example;lr>\r\nRecord-Route: <sip:10.9.9.9:5070;lr>\r\n"
    ev = start_call(ua, extra=rr)
    ua.answer(ev.call_id, b"v=0\r\n", 0.0)
    ok = [m for m, _ in sent(ua) if isinstance(m, Response) and m.status == 200][0]
    assert ok.headers.get_all("Record-Route") == ["<sip:proxy2.example;lr>", "<sip:10.9.9.9:5070;lr>"]
    to_tag = ua._calls[ev.call_id].dialog.local_tag
    ua.receive_datagram(request("ACK", cseq=1, to_tag=to_tag), CALLER, 0.1)
    ua.next_events()
    ua.hangup(ev.call_id, 1.0)
    assert ua.next_events() == [CallEnded(ev.call_id, "local-bye")]
    (bye, addr), = sent(ua)
    assert isinstance(bye, Request) and bye.method == "BYE"
    assert bye.uri == "sip:5551234@10.0.0.5:5060"  # the remote target (Contact)
    assert bye.headers.get_all("Route") == ["<sip:proxy2.example;lr>", "<sip:10.9.9.9:5070;lr>"]
    assert bye.headers.get("From").endswith(f"tag={to_tag}")
    assert bye.headers.get("To").endswith("tag=caller1")
    assert bye.cseq[1] == "BYE"
    assert addr == (CALLER[0], 5060)  # first route is a name: no resolver in the core, back to the source
    # retransmitted until answered
    ua.handle_timer(1.0 + T1)
    assert [m.method for m, _ in sent(ua)] == ["BYE"]
    resp = Response(200, "OK", bye.headers.copy())
    ua.receive_datagram(resp.serialize(), CALLER, 1.6)
    ua.handle_timer(1.6 + 2 * T1)
    assert sent(ua) == []


def test_hangup_route_with_ip_goes_to_that_proxy(ua):
    ev = start_call(ua, extra="Record-Route: <sip:10.9.9.9:5070;lr>\r\n")
    ua.answer(ev.call_id, b"v=0\r\n", 0.0)
    sent(ua)
    ua.hangup(ev.call_id, 1.0)
    (bye, addr), = [x for x in sent(ua) if isinstance(x[0], Request)]
    assert addr == ("10.9.9.9", 5070)


def _answered_call(ua, extra=""):
    ev = start_call(ua, extra=extra)
    ua.answer(ev.call_id, b"v=0\r\nanswer\r\n", 0.0)
    out = sent(ua)
    return ev, ua._calls[ev.call_id].dialog.local_tag, out


def test_reinvite_hands_the_offer_to_the_call_layer_and_answers_with_its_sdp(ua):
    from telephony.sip.events import SessionUpdate

    ev, to_tag, _ = _answered_call(ua)
    hold = OFFER.replace("a=sendrecv", "a=sendonly")
    ua.receive_datagram(invite(call_id=ev.call_id, to_tag=to_tag, cseq=2, sdp=hold), CALLER, 5.0)
    assert statuses(ua) == [100]
    (upd,) = ua.next_events()
    assert isinstance(upd, SessionUpdate) and upd.method == "INVITE" and upd.offer.media[0].direction == "sendonly"
    ua.answer_update(ev.call_id, b"v=0\r\nheld\r\n", 5.0)
    (resp, _), = sent(ua)
    assert resp.status == 200 and resp.body == b"v=0\r\nheld\r\n" and resp.cseq == (2, "INVITE")


def test_update_and_info_in_dialog_and_500_while_an_offer_of_theirs_is_open(ua):
    from telephony.sip.events import InfoReceived, SessionUpdate

    ev, to_tag, _ = _answered_call(ua)
    upd = request("UPDATE", call_id=ev.call_id, cseq=3, to_tag=to_tag, extra="Content-Type: application/sdp\r\n")
    upd = upd.replace(b"Content-Length: 0\r\n\r\n", f"Content-Length: {len(OFFER)}\r\n\r\n{OFFER}".encode())
    ua.receive_datagram(upd, CALLER, 1.0)
    assert [type(e) for e in ua.next_events()] == [SessionUpdate]
    ua.receive_datagram(invite(call_id=ev.call_id, to_tag=to_tag, cseq=4), CALLER, 1.1)  # glare
    assert statuses(ua) == [100, 500]  # RFC 3261 §14.2: a second INVITE while one is pending
    ua.answer_update(ev.call_id, b"v=0\r\n", 1.2)
    assert statuses(ua) == [200]
    info = request("INFO", call_id=ev.call_id, cseq=5, to_tag=to_tag,
                   extra="Content-Type: application/dtmf-relay\r\n").replace(
        b"Content-Length: 0\r\n\r\n", b"Content-Length: 24\r\n\r\nSignal=5\r\nDuration=160\r\n")
    ua.receive_datagram(info, CALLER, 2.0)
    assert statuses(ua) == [200]
    assert ua.next_events() == [InfoReceived(ev.call_id, "application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n")]
    ua.receive_datagram(request("INFO", call_id="nope", to_tag="x"), CALLER, 2.0)
    assert statuses(ua) == [481]


def test_session_timer_agreed_with_the_caller_refreshing(ua):
    ev, _, out = _answered_call(ua, extra="Session-Expires: 1800\r\nSupported: timer\r\n")
    assert ev.session_expires == 1800
    ok = [m for m, _ in out if isinstance(m, Response) and m.status == 200][0]
    assert ok.headers.get("Session-Expires") == "1800;refresher=uac"
    assert ok.headers.get("Require") == "timer"


def test_each_refresh_agrees_the_session_timer_anew(ua):
    """RFC 4028 §9/§7.4: a refresh negotiates the timer as the initial INVITE did. One re-INVITE
    agrees 1800 s; a later one without Session-Expires gets a 200 without it (no session
    expiration: the interval is not carried over), and a refused re-offer changes nothing."""
    ev, to_tag, _ = _answered_call(ua)
    timer = "Session-Expires: 1800;refresher=uac\r\nSupported: timer\r\n"
    ua.receive_datagram(invite(call_id=ev.call_id, to_tag=to_tag, cseq=2, extra=timer), CALLER, 1.0)
    (upd,) = ua.next_events()
    assert upd.session_expires == 1800
    ua.answer_update(ev.call_id, b"v=0\r\n", 1.0)
    (ok, _), = [x for x in sent(ua) if x[0].status == 200]
    assert ok.headers.get("Session-Expires") == "1800;refresher=uac" and ua.session_expires(ev.call_id) == 1800
    ua.receive_datagram(invite(call_id=ev.call_id, to_tag=to_tag, cseq=3, extra="Session-Expires: 600\r\n"
                               "Supported: timer\r\n"), CALLER, 2.0)
    ua.next_events()
    ua.reject_update(ev.call_id, 488, 2.0)  # refused: the session (and its timer) stays as it was
    assert ua.session_expires(ev.call_id) == 1800
    ua.receive_datagram(invite(call_id=ev.call_id, to_tag=to_tag, cseq=4), CALLER, 3.0)
    (upd,) = ua.next_events()
    assert upd.session_expires is None
    ua.answer_update(ev.call_id, b"v=0\r\n", 3.0)
    (ok, _), = [x for x in sent(ua) if x[0].status == 200]
    assert ok.headers.get("Session-Expires") is None and ok.headers.get("Require") is None
    assert ua.session_expires(ev.call_id) is None


def test_reinvite_requiring_an_unknown_option_is_420_and_the_call_stays(ua):
    ev, to_tag, _ = _answered_call(ua)
    ua.receive_datagram(invite(call_id=ev.call_id, to_tag=to_tag, cseq=2, extra="Require: foo, timer\r\n"),
                        CALLER, 1.0)
    (resp, _), = sent(ua)
    assert resp.status == 420 and resp.headers.get("Unsupported") == "foo"
    assert ua.next_events() == [] and ua.active_calls == 1


def test_session_interval_too_small_is_422_with_min_se(ua):
    ua.receive_datagram(invite(extra="Session-Expires: 30\r\nSupported: timer\r\n"), CALLER, 0.0)
    out = [m for m, _ in sent(ua)]
    assert [m.status for m in out] == [100, 422] and out[1].headers.get("Min-SE") == "90"
    assert ua.next_events() == []


def test_full_server_answers_503_with_retry_after_and_options_says_so(ua):
    ua.max_calls = 1
    start_call(ua, call_id="c1")
    sent(ua)
    ua.receive_datagram(invite(call_id="c2"), CALLER, 0.1)
    ua.receive_datagram(request("OPTIONS"), CALLER, 0.1)
    out = [m for m, _ in sent(ua)]
    assert [m.status for m in out] == [100, 503, 503]
    assert out[1].headers.get("Retry-After") and out[2].headers.get("Retry-After")
    assert ua.next_events() == []


def test_draining_refuses_new_calls_but_keeps_the_ones_in_progress(ua):
    ev = start_call(ua, call_id="c1")
    ua.answer(ev.call_id, b"v=0\r\n", 0.0)
    sent(ua)
    ua.draining = True
    ua.receive_datagram(invite(call_id="c2"), CALLER, 0.1)
    assert statuses(ua) == [100, 503]
    to_tag = ua._calls["c1"].dialog.local_tag
    ua.receive_datagram(request("BYE", call_id="c1", to_tag=to_tag), CALLER, 1.0)
    assert statuses(ua) == [200]
    assert ua.next_events() == [CallEnded("c1", "remote-bye")]


def test_allow_list_403_logged_once_a_minute(ua, caplog):
    from telephony.admission import Admission, AdmissionPolicy

    ua.admission = Admission(AdmissionPolicy(allow=["192.168.0.0/16"]))
    with caplog.at_level("WARNING"):
        ua.receive_datagram(invite(), CALLER, 0.0)
        ua.receive_datagram(request("OPTIONS"), CALLER, 10.0)
        ua.receive_datagram(request("ACK"), CALLER, 11.0)  # no response to an ACK
        ua.receive_datagram(request("OPTIONS"), CALLER, 61.0)
    assert statuses(ua) == [403, 403, 403]
    assert ua.next_events() == []
    assert len([r for r in caplog.records if "allow-list" in r.message]) == 2
    ua.receive_datagram(request("OPTIONS"), ("192.168.1.9", 5060), 62.0)
    assert statuses(ua) == [200]


def test_per_source_invite_rate_limit(ua):
    from telephony.admission import Admission, AdmissionPolicy

    ua.admission = Admission(AdmissionPolicy(invite_rate=2, invite_burst=2))
    for i in range(3):
        ua.receive_datagram(invite(call_id=f"r{i}"), CALLER, 0.0)
    out = [m for m, _ in sent(ua)]
    assert [m.status for m in out] == [100, 100, 503]
    assert "rate" in out[2].reason
    ua.receive_datagram(invite(call_id="other"), ("10.9.9.9", 5060), 0.0)  # another source is not limited
    ua.receive_datagram(invite(call_id="r9"), CALLER, 1.0)  # refilled after a second
    assert statuses(ua) == [100, 100]


def test_oversized_message_513_and_header_flood_400(ua):
    from telephony.admission import Admission, AdmissionPolicy

    ua.admission = Admission(AdmissionPolicy(max_message_bytes=1500, max_headers=40))
    big = invite(extra="X-Pad: " + "a" * 2000 + "\r\n")
    ua.receive_datagram(big, CALLER, 0.0)
    assert statuses(ua) == [513]
    flood = invite(call_id="f", extra="".join(f"X-H{i}: v\r\n" for i in range(60)))
    ua.receive_datagram(flood, CALLER, 0.0)
    (data, _), = ua.datagrams_to_send()
    assert data.startswith(b"SIP/2.0 400 ") and b"header lines" in data


def _run_out(ua, now):
    while (t := ua.get_timer()) is not None:
        now = t
        ua.handle_timer(now)
        ua.datagrams_to_send()
        ua.next_events()
    return now


def test_found_by_fuzzing_late_invite_retransmission_after_ack(ua):
    ev = start_call(ua, branch="z9hG4bKlate")
    ua.answer(ev.call_id, b"v=0\r\n", 0.0)
    to_tag = ua._calls[ev.call_id].dialog.local_tag
    ua.receive_datagram(request("ACK", cseq=1, to_tag=to_tag), CALLER, 0.1)
    ua.next_events()
    sent(ua)
    ua.receive_datagram(invite(branch="z9hG4bKlate"), CALLER, 0.5)  # arrives after the ACK
    assert statuses(ua) == [200]  # the 2xx again, not 482
    ua.hangup(ev.call_id, 1.0)
    _run_out(ua, 1.0)
    assert ua._calls == {} and ua._transactions == {} and ua._call_of_tx == {}


def test_found_by_fuzzing_bad_contact_is_a_400_and_leaves_nothing_behind(ua):
    data = invite(branch="z9hG4bKbadc").replace(b"Contact: <sip:5551234@10.0.0.5:5060>", b"Contact: <http://x>")
    ua.receive_datagram(data, CALLER, 0.0)
    assert statuses(ua) == [400]
    ua.receive_datagram(data, CALLER, 0.2)  # retransmission: the same 400
    assert statuses(ua) == [400]
    assert ua.next_events() == []
    _run_out(ua, 0.2)
    assert ua._calls == {} and ua._transactions == {}


def _authorization(challenge: str, user: str, password: str, nc: str, algorithm: str, method="INVITE",
                   uri="sip:1000@192.0.2.1:5060", password_override=None):
    from telephony.sip.auth import digest_response, parse_digest

    p = parse_digest(challenge)
    resp = digest_response(algorithm, user, p["realm"], password_override or password, method, uri, p["nonce"], nc, "c0ffee")
    return (f'Authorization: Digest username="{user}", realm="{p["realm"]}", nonce="{p["nonce"]}", uri="{uri}", '
            f'response="{resp}", algorithm={algorithm}, qop=auth, nc={nc}, cnonce="c0ffee"\r\n')


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_digest_auth_challenge_then_accept_and_replay_refused(ua, algorithm):
    from telephony.sip.auth import DigestAuthenticator

    ua.authenticator = DigestAuthenticator("sip-tts", {"pbx": "s3cret"})
    ua.receive_datagram(invite(call_id="a1"), CALLER, 0.0)
    (resp, _), = sent(ua)
    assert resp.status == 401
    challenges = resp.headers.get_all("WWW-Authenticate")
    assert [c.split("algorithm=")[1].split(",")[0] for c in challenges] == ["SHA-256", "MD5"]  # strongest first
    chosen = [c for c in challenges if f"algorithm={algorithm}," in c][0]
    good = _authorization(chosen, "pbx", "s3cret", "00000001", algorithm)
    ua.receive_datagram(invite(call_id="a2", extra=good), CALLER, 1.0)
    assert statuses(ua) == [100] and len(ua.next_events()) == 1
    ua.receive_datagram(invite(call_id="a3", extra=good), CALLER, 2.0)  # same nonce, same nc: a replay
    assert statuses(ua) == [401]
    ua.receive_datagram(invite(call_id="a4", extra=_authorization(chosen, "pbx", "s3cret", "00000002", algorithm)),
                        CALLER, 3.0)
    assert statuses(ua) == [100]  # a higher nc on the same nonce is fine
    bad = _authorization(chosen, "pbx", "s3cret", "00000003", algorithm, password_override="wrong")
    ua.receive_datagram(invite(call_id="a5", extra=bad), CALLER, 4.0)
    assert statuses(ua) == [401]


def test_digest_auth_expired_nonce_is_stale(ua):
    from telephony.sip.auth import DigestAuthenticator

    ua.authenticator = DigestAuthenticator("sip-tts", {"pbx": "s3cret"}, nonce_ttl=60)
    ua.receive_datagram(invite(call_id="s1"), CALLER, 0.0)
    (resp, _), = sent(ua)
    challenge = resp.headers.get_all("WWW-Authenticate")[0]
    late = _authorization(challenge, "pbx", "s3cret", "00000001", "SHA-256")
    ua.receive_datagram(invite(call_id="s2", extra=late), CALLER, 120.0)
    (resp, _), = sent(ua)
    assert resp.status == 401 and "stale=true" in resp.headers.get("WWW-Authenticate")


def test_every_outgoing_message_names_its_transport(ua):
    """Responses go back over the transport their request came in on, our BYE over its dialog's:
    the I/O layer reads it instead of looking for SIP/2.0/TCP in the bytes."""
    ua.receive_datagram(invite(call_id="over-tcp"), CALLER, 0.0, "TCP")
    ua.receive_datagram(invite(call_id="over-udp"), ("10.0.0.6", 5060), 0.0)
    assert [(m.transport, m.addr) for m in ua.messages_to_send()] == [("TCP", CALLER), ("UDP", ("10.0.0.6", 5060))]
    ua.next_events()
    ua.answer("over-tcp", b"v=0\r\n", 1.0)  # later, outside the receive path: still over TCP
    (ok,) = ua.messages_to_send()
    assert ok.transport == "TCP" and ok.data.startswith(b"SIP/2.0 200 ")
    tag = parse_message(ok.data).headers.get("To").split("tag=")[1]
    ua.receive_datagram(request("ACK", call_id="over-tcp", cseq=1, to_tag=tag), CALLER, 1.1, "TCP")
    ua.hangup("over-tcp", 2.0)
    (bye,) = ua.messages_to_send()
    assert bye.transport == "TCP" and bye.data.startswith(b"BYE ") and bye.addr == CALLER
