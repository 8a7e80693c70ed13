"""Signalling over a real UDP socket: the edges SIPp scenarios do not reach."""

import socket
import time

from telephony.sip import Response, parse_message
from tests.sipmsg import LOOPBACK, invite, offer, request


def exchange(server, data, expect=1, timeout=3.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(timeout)
    s.sendto(data, ("127.0.0.1", server.port))
    got = []
    try:
        while len(got) < expect:
            got.append(s.recvfrom(65535))
    except socket.timeout:
        pass
    s.close()
    return got


def via_for(server):
    return "127.0.0.1:1"  # a sent-by that differs from the real source: responses must go to the source


def test_options_ok(server):
    (data, addr), = exchange(server, request("OPTIONS", via_host=via_for(server)))
    resp = parse_message(data)
    assert isinstance(resp, Response) and resp.status == 200
    assert addr == ("127.0.0.1", server.port)
    assert "rport=" in resp.headers.get("Via")


def test_garbage_is_ignored_and_malformed_gets_400_and_the_server_lives_on(server):
    assert exchange(server, b"\x00\x01garbage\xff" * 20, timeout=0.5) == []
    bad = request("OPTIONS").replace(b"CSeq: 2 OPTIONS", b"CSeq: 2 INVITE")
    (data, _), = exchange(server, bad)
    assert data.startswith(b"SIP/2.0 400 ")
    (data, _), = exchange(server, request("OPTIONS"))
    assert data.startswith(b"SIP/2.0 200 ")


def test_unknown_number_without_default_route_gets_404(start_server):
    srv = start_server(prompts='routes:\n  "1000": "hello"\n')
    got = exchange(srv, invite(user="999", sdp=offer(LOOPBACK), host=LOOPBACK), expect=2)
    assert [parse_message(d).status for d, _ in got] == [100, 404]


def test_cancel_before_answer_races_cleanly(server):
    """INVITE then CANCEL at once, from one socket, so the INVITE arrives first (loopback keeps order).

    RFC 3261 §9.2: a CANCEL that matches a server transaction is answered 200 by the UAS itself,
    "regardless of the method of the original request"; 481 is only for a CANCEL that matches none.
    The INVITE's transaction exists when the CANCEL arrives, and still exists if the 200 won the
    race (RFC 6026 keeps it in "Accepted"), so the only right answer to this CANCEL is 200. The
    INVITE gets exactly one final response: 487 if the CANCEL came before the answer (a SHOULD in
    §9.2, which we keep), else the 200 (the CANCEL then has no effect and the caller sends BYE).
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2)
    inv = invite(branch="z9hG4bKrace1", call_id="race-1", sdp=offer(LOOPBACK), host=LOOPBACK)
    s.sendto(inv, ("127.0.0.1", server.port))
    s.sendto(request("CANCEL", branch="z9hG4bKrace1", call_id="race-1", cseq=1), ("127.0.0.1", server.port))
    statuses = []
    answered = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            data, _ = s.recvfrom(65535)
        except socket.timeout:
            break
        msg = parse_message(data)
        if isinstance(msg, Response):
            statuses.append((msg.status, msg.cseq[1]))
            if msg.status >= 200:
                answered.append(msg)
            if len([x for x in statuses if x[0] >= 200]) == 2:
                break
    if (200, "INVITE") in statuses:  # the 200 won the race: the call is up, so end it properly
        to_tag = [m for m in answered if m.cseq[1] == "INVITE"][0].headers.get("To").split("tag=")[1]
        s.sendto(request("ACK", branch="z9hG4bKrace1ack", call_id="race-1", cseq=1, to_tag=to_tag), ("127.0.0.1", server.port))
        s.sendto(request("BYE", call_id="race-1", cseq=2, to_tag=to_tag), ("127.0.0.1", server.port))
    s.close()
    assert (200, "CANCEL") in statuses, statuses
    assert (481, "CANCEL") not in statuses, statuses
    invite_finals = {status for status, method in statuses if method == "INVITE" and status >= 200}
    assert invite_finals in ({487}, {200}), statuses
    if invite_finals == {487}:  # our CANCEL's 200 is sent before the 487 it causes (wire order)
        assert statuses.index((200, "CANCEL")) < statuses.index((487, "INVITE")), statuses
