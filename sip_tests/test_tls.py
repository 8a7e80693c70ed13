"""SIP over TLS: a Python TLS client, a wrong certificate and port scanners against the real server.

Certificates come from a throwaway CA made by openssl in the test. Run inside a network
namespace like the rest of sip_tests.
"""

import os
import socket
import ssl
import subprocess
import sys
import time

import numpy as np
import pytest

from telephony.sip.message import frame_length
from tests.sipmsg import invite, offer, request

from .conftest import PEERS, ROOT, free_udp_port, require
from .test_baresip import best_correlation, read_wav
from .pcap import read_udp
from .tls_certs import make_certs


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def certs(tmp_path):
    return make_certs(tmp_path / "certs")


def tls_server(start_server, certs, verify_client=True, extra=""):
    port = free_tcp_port()
    srv = start_server(prompts='routes:\n  "2000": "Hello."\ndefault: "Hello."\n', sip_yaml=(
        f"  tls:\n    listen: 127.0.0.1:{port}\n    cert_file: {certs.server_cert}\n    key_file: {certs.server_key}\n"
        f"    ca_file: {certs.ca}\n    verify_client: {'true' if verify_client else 'false'}\n"), extra_yaml=extra)
    srv.tls_port = port
    return srv


def client_context(certs, cert=None, key=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def tls_connect(srv, ctx) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", srv.tls_port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def read_messages(s, count: int, timeout: float = 10.0) -> list[bytes]:
    s.settimeout(timeout)
    buf, out = b"", []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        chunk = s.recv(65535)
        if not chunk:
            break
        buf += chunk
        while (n := frame_length(buf)) is not None:
            out.append(buf[:n])
            buf = buf[n:]
    return out


def tls(data: bytes) -> bytes:
    return data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TLS")


def test_options_and_a_call_over_tls_with_our_bye_on_the_same_connection(start_server, certs):
    srv = tls_server(start_server, certs)
    s = tls_connect(srv, client_context(certs, certs.client_cert, certs.client_key))
    assert s.version() in ("TLSv1.2", "TLSv1.3")
    s.sendall(tls(request("OPTIONS", via_host="127.0.0.1:5099")))
    (ok,) = read_messages(s, 1)
    assert ok.startswith(b"SIP/2.0 200 OK\r\n")
    s.sendall(tls(invite(call_id="tls-2", user="2000", host="127.0.0.1", via_host="127.0.0.1:5099",
                         sdp=offer("127.0.0.1", free_udp_port()))))
    got = read_messages(s, 2)
    assert got[-1].startswith(b"SIP/2.0 200 OK\r\n"), got
    ok = got[-1].decode()
    assert f";transport=tls>" in ok and f":{srv.tls_port};transport=tls" in ok  # Contact: our TLS port
    to = next(line for line in ok.split("\r\n") if line.startswith("To:"))
    s.sendall(tls((f"ACK sip:sip-tts@127.0.0.1:{srv.tls_port};transport=tls SIP/2.0\r\n"
                   f"Via: SIP/2.0/TLS 127.0.0.1:5099;branch=z9hG4bKack2\r\nMax-Forwards: 70\r\n"
                   f'From: "Caller" <sip:5551234@127.0.0.1>;tag=caller1\r\n{to}\r\nCall-ID: tls-2\r\n'
                   f"CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode()))
    (bye,) = read_messages(s, 1, timeout=20)  # "Hello." is short: the server hangs up
    assert bye.startswith(b"BYE ") and b"Via: SIP/2.0/TLS " in bye and f":{srv.tls_port};".encode() in bye
    head = bye.split(b"\r\n\r\n")[0].decode().split("\r\n")
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in head[1:]}
    s.sendall((f"SIP/2.0 200 OK\r\nVia: {fields['Via']}\r\nFrom: {fields['From']}\r\nTo: {fields['To']}\r\n"
               f"Call-ID: {fields['Call-ID']}\r\nCSeq: {fields['CSeq']}\r\nContent-Length: 0\r\n\r\n").encode())
    s.close()
    deadline = time.monotonic() + 10
    while "ended: prompt-done" not in srv.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "ended: prompt-done" in srv.log_text()


def test_wrong_certificates_old_tls_and_port_scanners_leave_the_server_serving(start_server, certs):
    srv = tls_server(start_server, certs)
    good = client_context(certs, certs.client_cert, certs.client_key)
    # 1. a client certificate from no CA we trust, and none at all: refused in the handshake
    for ctx in (client_context(certs, certs.rogue_cert, certs.rogue_key), client_context(certs)):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            s = tls_connect(srv, ctx)
            s.sendall(tls(request("OPTIONS", via_host="127.0.0.1:5099")))
            assert read_messages(s, 1, timeout=3) == []  # TLS 1.3: the refusal arrives after the handshake
            raise ConnectionError("refused after the handshake")
    # 2. TLS 1.1 and below: refused
    old = client_context(certs, certs.client_cert, certs.client_key)
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_connect(srv, old)
    # 3. port scanners: connect and leave, plain text, half a ClientHello then silence
    socket.create_connection(("127.0.0.1", srv.tls_port), timeout=5).close()
    with socket.create_connection(("127.0.0.1", srv.tls_port), timeout=5) as p:
        p.sendall(b"GET / HTTP/1.0\r\n\r\n" + request("OPTIONS"))
        p.settimeout(5)
        try:
            assert p.recv(100) == b""  # closed: nothing is answered in clear
        except ConnectionResetError:
            pass
    idle = socket.create_connection(("127.0.0.1", srv.tls_port), timeout=5)
    idle.sendall(b"\x16\x03\x01\x00\xc8\x01")  # the first bytes of a ClientHello, then nothing
    # the server still serves: TLS with the right certificate, and UDP
    s = tls_connect(srv, good)
    s.sendall(tls(request("OPTIONS", via_host="127.0.0.1:5099")))
    assert read_messages(s, 1)[0].startswith(b"SIP/2.0 200 OK")
    s.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(5)
    u.sendto(request("OPTIONS"), ("127.0.0.1", srv.port))
    assert u.recv(65535).startswith(b"SIP/2.0 200 OK")
    u.close()
    idle.close()
    assert srv.proc.poll() is None


def test_baresip_over_tls_with_mandatory_srtp_hears_the_prompt(start_server, certs, tmp_path, capture):
    """baresip (its srtp module, mediaenc=srtp-mand) calls over TLS; the server only takes SRTP.

    What it recorded, decrypted by baresip, must correlate with `sip-tts say` of the prompt
    as the plain-RTP baresip test does.
    """
    require("baresip")
    text = "Thank you for calling. This is a test of the media server."
    port = free_tcp_port()
    srv = start_server(sip_yaml=(f"  tls:\n    listen: 127.0.0.1:{port}\n    cert_file: {certs.server_cert}\n"
                                 f"    key_file: {certs.server_key}\n"), extra_yaml="media:\n  srtp: required\n")
    ref_path, rec_path = tmp_path / "ref.wav", tmp_path / "rec.wav"
    subprocess.run([sys.executable, "-m", "sip_tts.cli", "say", text, "--out", str(ref_path),
                    "--config", str(srv.workdir / "server.yaml")], cwd=ROOT, check=True, capture_output=True)
    env = {**os.environ, "BARESIP_ACCOUNT_PARAMS": ";mediaenc=srtp-mand", "BARESIP_RTP_PORTS": "30200-30210",
           "BARESIP_EXTRA_CONFIG": f"module srtp.so\nsip_cafile {certs.ca}"}
    lo, hi = srv.rtp_range
    cap = capture(f"udp and src portrange {lo}-{hi} and dst portrange 30200-30210")
    res = subprocess.run([str(PEERS / "baresip" / "call_and_record.sh"), f"sip:1000@127.0.0.1:{port};transport=tls",
                          str(rec_path), "20"], capture_output=True, text=True, timeout=90, env=env)
    cap.stop()
    assert res.returncode == 0, res.stderr[-3000:]
    assert "terminated" in res.stderr, res.stderr[-2000:]  # our BYE, over the TLS connection
    rec, ref = read_wav(rec_path), read_wav(ref_path)
    assert ref_s_ok(len(ref) / 8000, len(rec) / 8000)
    assert np.sqrt(np.mean(rec ** 2)) > 1000
    corr, lag = best_correlation(rec, ref)
    assert corr > 0.9, (corr, lag)
    log = srv.log_text()
    assert "ended: prompt-done" in log and "0 lost" in log  # baresip's SRTP reached us and was decrypted
    ours = [p.payload for p in read_udp(cap.path) if len(p.payload) > 12 and p.payload[1] & 0x7F == 0]
    rtp = [p for p in ours if p[0] >> 6 == 2]
    assert len(rtp) > 100 and {len(p) for p in rtp} == {12 + 160 + 10}  # SRTP: the 80-bit auth tag on each
    silence = bytes([0xFF]) * 160
    assert not any(p[12:172] == silence for p in rtp)  # the payload is encrypted: even our silence frames


def ref_s_ok(ref_s: float, rec_s: float) -> bool:
    """Speech of the expected length: the prompt plus the 300 ms tail and jitter-buffer slack."""
    return ref_s - 0.1 < rec_s < ref_s + 1.5


def test_a_plain_rtp_offer_gets_488_when_srtp_is_required(start_server):
    srv = start_server(extra_yaml="media:\n  srtp: required\n")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(5)
    u.sendto(invite(call_id="plain-1", user="1000", host="127.0.0.1", via_host="127.0.0.1:5099",
                    sdp=offer("127.0.0.1", free_udp_port())), ("127.0.0.1", srv.port))
    finals = []
    while not finals:
        data = u.recv(65535)
        if not data.startswith(b"SIP/2.0 100"):
            finals.append(data)
    u.close()
    assert finals[0].startswith(b"SIP/2.0 488 Not Acceptable Here\r\n")
    assert b'Warning: 304 sip-tts "SRTP required' in finals[0]
