"""SIPp places calls to the real server; the RTP it receives is captured and measured."""


from .conftest import run_sipp, sipp_counts
from .pcap import read_udp
from .rtp_analysis import rtp_streams


def test_20_calls_5_at_a_time_each_ended_by_our_bye_with_perfect_rtp(server, capture, tmp_path):
    media_port = 17000
    cap = capture(f"udp and dst host 127.0.0.1 and dst port {media_port}")
    res = run_sipp(server.uri_host, "uac_pcmu_wait_bye.xml", "1000", tmp_path,
                   "-m", "20", "-l", "5", "-r", "5", "-recv_timeout", "20000", media_port=media_port)
    cap.stop()
    assert res.returncode == 0, f"sipp failed ({res.returncode}):\n{res.stdout[-2000:]}\n{server.log_text()[-2000:]}"
    counts = sipp_counts(tmp_path)
    # uac_pcmu_wait_bye only succeeds when the far end (us) sends BYE.
    assert counts["SuccessfulCall(C)"] == 20
    assert counts["FailedCall(C)"] == 0

    packets = read_udp(cap.path)
    streams = rtp_streams(packets)
    assert len(streams) == 20, f"expected one RTP stream per call, got {len(streams)}"
    lo, hi = server.rtp_range
    assert all(lo <= p.src[1] <= hi for p in packets)  # our RTP ports come from the configured range
    assert server.log_text().count("ended: prompt-done") == 20
    report = []
    for s in streams.values():
        report.append((s.packets, round(s.median_ms, 2), round(s.p99_abs_dev_ms, 2), round(s.max_interval_ms, 2)))
        assert s.payload_types == {0}  # PCMU
        assert s.seq_gaps == 0
        assert s.markers == [0]
        # On the 20 ms grid, every frame sent, timestamps true to wall time. A stall of the whole
        # host may skip slots (the timestamp then jumps by whole frames: the pacer's rule), so
        # steps are multiples of 160. Timing margins are wide and stated: on the shared 2-core
        # host at load average 12 a 220 ms stall was seen; the pacer's precision is measured by
        # benchmarks/rtp_pacing.py, not here.
        assert 160 in s.ts_steps and all(step % 160 == 0 for step in s.ts_steps), s.ts_steps
        assert abs(s.median_ms - 20.0) < 0.5
        assert abs(s.clock_drift_ms) < 60.0, report  # the timestamps followed the clock
        assert s.on_grid_share >= 0.8, report  # most intervals 20 +- 5 ms (stalls make the rest)
        assert s.max_interval_ms < 300.0, report
    lengths = {s.packets for s in streams.values()}
    assert max(lengths) - min(lengths) <= 1  # same prompt, same length
    print("packets, median ms, p99 |dev| ms, max ms:", report)


def test_no_g711_offer_gets_488(server, tmp_path):
    # SIPp's UAC scenario with the audio line rewritten to offer only G.729
    scenario = (tmp_path / "g729.xml")
    from .conftest import PEERS
    text = (PEERS / "sipp" / "uac_pcmu_bye.xml").read_text()
    text = text.replace("m=audio [media_port] RTP/AVP 0 101", "m=audio [media_port] RTP/AVP 18")
    text = text.replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:18 G729/8000")
    text = text.replace('<recv response="200" rtd="true"', '<recv response="488" rtd="true"')
    assert "488" in text
    start = text.index("<recv response=\"488\"")
    end = text.index("</scenario>")
    ack = (
        '<recv response="488" rtd="true"/>\n<send><![CDATA[\n\n'
        "      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0\n"
        "      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]\n"
        "      [last_From:]\n      [last_To:]\n      [last_Call-ID:]\n      CSeq: 1 ACK\n"
        "      Max-Forwards: 70\n      Content-Length: 0\n\n]]></send>\n"
    )
    text = text[:start] + ack + text[end:]
    scenario.write_text(text)
    import subprocess
    from .conftest import free_udp_port
    res = subprocess.run(
        ["sipp", server.uri_host, "-sf", str(scenario), "-s", "1000", "-i", "127.0.0.1", "-p", str(free_udp_port()),
         "-mi", "127.0.0.1", "-mp", "17100", "-m", "1", "-nostdin", "-recv_timeout", "5000"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout[-2000:]


def test_sigterm_drains_new_calls_get_503_calls_in_progress_finish_exit_0(start_server, tmp_path):
    import socket
    import subprocess
    import time

    from telephony.sip import parse_message
    from tests.sipmsg import LOOPBACK, invite, offer, request

    from .conftest import PEERS, free_udp_port
    server = start_server(drain=20)
    sipp = subprocess.Popen(
        ["sipp", server.uri_host, "-sf", str(PEERS / "sipp" / "uac_pcmu_wait_bye.xml"), "-s", "1000",
         "-i", "127.0.0.1", "-p", str(free_udp_port()), "-mi", "127.0.0.1", "-mp", "17200",
         "-m", "2", "-l", "2", "-nostdin", "-recv_timeout", "20000"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)  # both calls up and playing
    server.proc.send_signal(__import__("signal").SIGTERM)
    time.sleep(0.3)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2)
    s.sendto(request("OPTIONS"), ("127.0.0.1", server.port))
    s.sendto(invite(call_id="late-call", sdp=offer(LOOPBACK), host=LOOPBACK), ("127.0.0.1", server.port))
    got = []
    while len(got) < 3:
        got.append(parse_message(s.recvfrom(65535)[0]))
    s.close()
    assert sorted((m.status, m.cseq[1]) for m in got) == [(100, "INVITE"), (503, "INVITE"), (503, "OPTIONS")]
    assert all(m.headers.get("Retry-After") for m in got if m.status == 503)
    out, _ = sipp.communicate(timeout=30)
    assert sipp.returncode == 0, out[-2000:]  # both calls finished with our BYE at the end of the prompt
    assert server.proc.wait(15) == 0
    log = server.log_text()
    assert log.count("ended: prompt-done") == 2 and "shutdown" not in log
