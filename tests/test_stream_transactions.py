"""Server transactions over TCP/TLS (RFC 3261 §17.2): no non-2xx retransmission, Timers I and J are 0;
a 2xx is still retransmitted until the ACK (§13.3.1.4)."""

from telephony.sip import IncomingCall
from telephony.sip.transaction import T1
from telephony.sip.useragent import UserAgent, UserAgentConfig
from tests.sipmsg import invite, request

PEER = ("10.0.0.5", 5062)


def stream(data: bytes) -> bytes:
    return data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TLS")


def test_a_non_2xx_over_tls_is_sent_once_and_its_transaction_ends_at_the_ack():
    ua = UserAgent(UserAgentConfig("192.0.2.1", 5060, tls_port=5061))
    ua.receive_datagram(stream(invite(call_id="s1", sdp=None, branch="z9hG4bKs1")), PEER, 0.0, "TLS")
    assert [d.split(b" ", 2)[1] for d, _ in ua.datagrams_to_send()] == [b"100", b"488"]
    ua.handle_timer(4 * T1)
    assert ua.datagrams_to_send() == []  # no Timer G on a stream
    ua.receive_datagram(stream(request("ACK", call_id="s1", cseq=1, branch="z9hG4bKs1")), PEER, 4 * T1, "TLS")
    ua.handle_timer(4 * T1)
    assert ua._transactions == {}  # Timer I = 0


def test_options_over_tcp_leaves_no_transaction_and_a_2xx_is_still_retransmitted():
    ua = UserAgent(UserAgentConfig("192.0.2.1", 5060, tls_port=5061))
    ua.receive_datagram(stream(request("OPTIONS")).replace(b"/TLS", b"/TCP"), PEER, 0.0, "TCP")
    assert ua.datagrams_to_send()[0][0].startswith(b"SIP/2.0 200 ")
    ua.handle_timer(0.0)
    assert ua._transactions == {}  # Timer J = 0
    ua.receive_datagram(stream(invite(call_id="s2")), PEER, 0.0, "TLS")
    (ev,) = ua.next_events()
    assert isinstance(ev, IncomingCall)
    ua.answer("s2", b"v=0\r\n", 0.0)
    first = [d for d, _ in ua.datagrams_to_send() if d.startswith(b"SIP/2.0 200 ")]
    ua.handle_timer(T1)
    again = [d for d, _ in ua.datagrams_to_send() if d.startswith(b"SIP/2.0 200 ")]
    assert first and again == first[:1]  # end to end through proxies: until the ACK
    assert b"Contact: <sip:sip-tts@192.0.2.1:5061;transport=tls>" in first[0]
