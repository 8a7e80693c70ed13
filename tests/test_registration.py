"""The REGISTER client: challenge, refresh before expiry, back-off on failure (no sockets, fake time)."""

from telephony.sip import Request, parse_message
from telephony.sip.auth import DigestAuthenticator
from telephony.sip.message import response_for
from telephony.sip.registration import Registration, RegistrationConfig
from telephony.sip.useragent import UserAgent, UserAgentConfig

REGISTRAR = ("192.0.2.50", 5060)


def make():
    ua = UserAgent(UserAgentConfig("192.0.2.1", 5060))
    cfg = RegistrationConfig("sip:pbx.example", "sip:1000@pbx.example", "sip:1000@192.0.2.1:5060",
                             username="1000", password="pw", expires=60)
    ua.start_registration(Registration(cfg, "192.0.2.1:5060"), REGISTRAR)
    return ua


def sent_requests(ua):
    out = []
    for data, addr in ua.datagrams_to_send():
        msg = parse_message(data)
        assert addr == REGISTRAR
        out.append(msg)
    return out


def reply(ua, req, status, now, extra=()):
    ua.receive_datagram(response_for(req, status, extra=list(extra)).serialize(), REGISTRAR, now)


def test_register_answers_the_challenge_and_refreshes_before_expiry():
    ua = make()
    assert ua.get_timer() == 0.0
    ua.handle_timer(0.0)
    (first,) = sent_requests(ua)
    assert isinstance(first, Request) and first.method == "REGISTER" and first.headers.get("Expires") == "60"
    registrar = DigestAuthenticator("pbx", {"1000": "pw"})
    reply(ua, first, 401, 0.1, registrar.challenges(0.1))
    (second,) = sent_requests(ua)
    assert second.cseq == (first.cseq[0] + 1, "REGISTER") and second.call_id == first.call_id
    ok, _ = registrar.check(second, 0.2)  # our own server-side check accepts the client's credentials
    assert ok and "algorithm=SHA-256" in second.headers.get("Authorization")
    reply(ua, second, 200, 0.2, [("Contact", "<sip:1000@192.0.2.1:5060>;expires=40")])
    assert ua.registration.registered
    assert ua.registration.deadline() == 0.2 + 20  # half of the 40 s the registrar granted
    ua.handle_timer(20.2)
    (refresh,) = sent_requests(ua)
    assert refresh.cseq[0] == second.cseq[0] + 1 and refresh.call_id == first.call_id


def test_refusal_backs_off_exponentially():
    ua = make()
    ua.handle_timer(0.0)
    (req,) = sent_requests(ua)
    reply(ua, req, 403, 0.1)
    assert ua.registration.deadline() == 0.1 + 5
    ua.handle_timer(5.1)
    (req,) = sent_requests(ua)
    reply(ua, req, 503, 5.2)
    assert ua.registration.deadline() == 5.2 + 10
    assert not ua.registration.registered


def test_no_response_times_out_and_retries():
    ua = make()
    ua.handle_timer(0.0)
    sent_requests(ua)
    now = 0.0
    retransmissions = 0
    while True:
        now = ua.get_timer()
        ua.handle_timer(now)
        out = sent_requests(ua)
        if ua.registration.pending_branch is None:
            break
        retransmissions += len(out)
    assert retransmissions >= 6 and 31 <= now <= 33  # Timer E retransmissions, Timer F = 64*T1
    assert ua.registration.deadline() == now + 5  # then back-off
