"""SIP over TCP (RFC 3261 §18): framing, the same connection for responses and our BYE, limits."""

import socket
import time

from telephony.sip import Response, parse_message
from telephony.sip.message import frame_length
from tests.sipmsg import request

from .conftest import run_sipp, sipp_counts


def tcp_connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    return s


def read_messages(s: socket.socket, count: int, timeout: float = 3.0) -> list:
    s.settimeout(timeout)
    buf = b""
    out = []
    while len(out) < count:
        chunk = s.recv(65535)
        if not chunk:
            break
        buf += chunk
        while (n := frame_length(buf)) is not None:
            out.append(parse_message(buf[:n]))
            buf = buf[n:]
    return out


def test_sipp_over_tcp_calls_end_with_our_bye_on_the_same_connection(server, tmp_path):
    res = run_sipp(server.uri_host, "uac_pcmu_wait_bye.xml", "2000", tmp_path, "-t", "t1",
                   "-m", "5", "-l", "2", "-recv_timeout", "20000", media_port=17800)
    assert res.returncode == 0, res.stdout[-2000:]
    assert sipp_counts(tmp_path)["SuccessfulCall(C)"] == 5
    assert server.log_text().count("ended: prompt-done") == 5


def test_message_larger_than_the_mtu_split_across_writes_and_pipelined_messages(server):
    s = tcp_connect(server.port)
    pad = "X-Pad: " + "a" * 3000 + "\r\n"
    big = request("OPTIONS", extra=pad).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
    assert len(big) > 3000
    for i in range(0, len(big), 1000):  # arrives in pieces
        s.sendall(big[i:i + 1000])
        time.sleep(0.05)
    small = request("OPTIONS").replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
    s.sendall(small + small)  # two messages in one segment
    got = read_messages(s, 3)
    s.close()
    assert [m.status for m in got] == [200, 200, 200]
    assert all(isinstance(m, Response) and m.cseq[1] == "OPTIONS" for m in got)


def test_connection_cap_per_source_idle_timeout_and_garbage(start_server):
    srv = start_server(prompts='default: "hi"\n',
                       sip_yaml="  tcp_max_connections_per_source: 2\n  tcp_idle_timeout_s: 5\n")
    a, b = tcp_connect(srv.port), tcp_connect(srv.port)
    c = tcp_connect(srv.port)
    c.settimeout(2)
    assert c.recv(100) == b""  # the third connection from this source is closed at once
    c.close()
    b.sendall(b"\x00garbage" * 1200)  # no framing within the size limit: closed
    b.settimeout(3)
    assert b.recv(100) == b""
    b.close()
    a.settimeout(15)
    t0 = time.monotonic()
    assert a.recv(100) == b""  # idle: closed by the server (timeout 5 s, swept every 5 s)
    assert time.monotonic() - t0 < 12
    a.close()
    deadline = time.monotonic() + 10  # the log is written by the server's writer thread: wait for it
    while True:
        log = srv.log_text()
        if ("refused TCP connection" in log and "idle TCP connection" in log) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "refused TCP connection" in log and "idle TCP connection" in log
