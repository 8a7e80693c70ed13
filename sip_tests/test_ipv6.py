"""IPv6: the server listens on ::1, SIPp calls it over IPv6 loopback; SDP says IP6, Via/Contact are
bracketed, and the RTP goes over IPv6. Run inside a network namespace with ::1 on lo."""

import subprocess
import sys

from .conftest import PEERS, ROOT, Capture, free_udp_port, require, sipp_counts
from .pcap import read_udp
from .rtp_analysis import rtp_streams


def test_sipp_calls_over_ipv6_loopback_and_hears_rtp_over_ipv6(tmp_path):
    require("sipp")
    port = free_udp_port()
    (tmp_path / "prompts.yaml").write_text('default: "Thank you for calling over I P version six."\n')
    (tmp_path / "server.yaml").write_text(
        f'sip:\n  listen: "[::1]:{port}"\nrtp:\n  port_min: 23000\n  port_max: 23099\nprompts: prompts.yaml\n')
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "sip_tts.cli", "serve", "--config", str(tmp_path / "server.yaml")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
    try:
        assert "ready" in proc.stdout.readline(), log.read_text()
        cap = Capture(tmp_path / "rtp6.pcap", "ip6 and udp and dst port 17600")
        res = subprocess.run(
            ["sipp", f"[::1]:{port}", "-sf", str(PEERS / "sipp" / "uac_pcmu_wait_bye.xml"), "-s", "2000",
             "-i", "::1", "-p", str(free_udp_port()), "-mi", "::1", "-mp", "17600", "-m", "2", "-l", "1",
             "-nostdin", "-recv_timeout", "20000", "-trace_msg", "-trace_stat",
             "-stf", str(tmp_path / "sipp_stats.csv")],
            cwd=tmp_path, capture_output=True, text=True, timeout=120)
        cap.stop()
        assert res.returncode == 0, res.stdout[-2000:]
        assert sipp_counts(tmp_path)["SuccessfulCall(C)"] == 2
    finally:
        proc.terminate()
        proc.wait(10)
    messages = next(tmp_path.glob("*_messages.log")).read_text()
    assert "c=IN IP6 ::1" in messages and "o=sip-tts " in messages  # our answer
    assert f"Contact: <sip:sip-tts@[::1]:{port}>" in messages
    assert "BYE sip:" in messages and f"Via: SIP/2.0/UDP [::1]:{port};" in messages  # our BYE's Via
    packets = read_udp(cap.path)
    streams = rtp_streams(packets)
    assert len(streams) == 2 and all(p.src[0] == "::1" for p in packets)
    for s in streams.values():
        assert s.packets > 50 and s.seq_gaps == 0 and s.payload_types == {0}
    assert log.read_text().count("ended: prompt-done") == 2


def test_listening_on_all_v6_addresses_serves_ipv4_callers_too(tmp_path):
    """listen: "[::]:PORT" is dual stack: an IPv4 SIPp call (its RTP and our BYE to v4-mapped
    addresses) and an IPv6 one both succeed, and TCP takes IPv4 connections."""
    import socket

    require("sipp")
    port = free_udp_port()
    (tmp_path / "prompts.yaml").write_text('default: "Hello."\n')
    (tmp_path / "server.yaml").write_text(
        f'sip:\n  listen: "[::]:{port}"\n  advertised_address: 127.0.0.1\n'
        "rtp:\n  port_min: 23100\n  port_max: 23199\nprompts: prompts.yaml\n")
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "sip_tts.cli", "serve", "--config", str(tmp_path / "server.yaml")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
    try:
        assert "ready" in proc.stdout.readline(), log.read_text()
        for family, (target, local) in {"v4": (f"127.0.0.1:{port}", "127.0.0.1"),
                                        "v6": (f"[::1]:{port}", "::1")}.items():
            d = tmp_path / family
            d.mkdir()
            res = subprocess.run(
                ["sipp", target, "-sf", str(PEERS / "sipp" / "uac_pcmu_wait_bye.xml"), "-s", "2000", "-i", local,
                 "-p", str(free_udp_port()), "-mi", local, "-mp", "17700", "-m", "1", "-nostdin",
                 "-recv_timeout", "20000", "-trace_stat", "-stf", str(d / "sipp_stats.csv")],
                cwd=d, capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, (family, res.stdout[-2000:], log.read_text()[-2000:])
            assert sipp_counts(d)["SuccessfulCall(C)"] == 1
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bKds1\r\n"
                      b"From: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:a@127.0.0.1>\r\nCall-ID: ds1\r\nCSeq: 1 OPTIONS\r\n"
                      b"Content-Length: 0\r\n\r\n")
            s.settimeout(5)
            assert s.recv(65535).startswith(b"SIP/2.0 200 OK")
    finally:
        proc.terminate()
        proc.wait(10)
    assert log.read_text().count("ended: prompt-done") == 2
