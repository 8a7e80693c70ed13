"""Hold and resume with re-INVITE from a real SIPp caller; RTP checked from the capture."""

import subprocess
from pathlib import Path

import numpy as np

from .conftest import free_udp_port
from .pcap import read_udp
from .rtp_analysis import rtp_streams
from telephony.rtp.packet import RtpPacket

SCENARIO = Path(__file__).parent / "scenarios" / "uac_hold_resume.xml"


def test_hold_stops_our_rtp_and_resume_continues_the_same_stream(server, capture, tmp_path):
    cap = capture("udp and dst host 127.0.0.1 and dst port 17900")
    res = subprocess.run(
        ["sipp", server.uri_host, "-sf", str(SCENARIO), "-s", "3000", "-i", "127.0.0.1", "-p", str(free_udp_port()),
         "-mi", "127.0.0.1", "-mp", "17900", "-m", "1", "-nostdin", "-recv_timeout", "10000",
         "-trace_msg", "-message_file", str(tmp_path / "msg.log")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    cap.stop()
    assert res.returncode == 0, res.stdout[-2000:] + server.log_text()[-1500:]
    msgs = (tmp_path / "msg.log").read_text()
    assert "Session-Expires: 1800;refresher=uac" in msgs and "a=recvonly" in msgs  # our answer to sendonly
    packets = [(p.time, RtpPacket.parse(p.payload)) for p in read_udp(cap.path)]
    (stream,) = rtp_streams(read_udp(cap.path)).values()  # one SSRC throughout
    times = np.array([t for t, _ in packets])
    gaps = np.diff(times)
    hold = int(np.argmax(gaps))
    assert 1.3 < gaps[hold] < 1.9  # nothing sent while on hold (~1.5 s)
    assert np.sort(gaps)[-2] < 0.1  # and no other gap (20 ms by design; 100 ms: a stated margin for a loaded host)
    assert stream.seq_gaps == 0  # sequence numbers continue across the hold
    before, after = packets[hold][1], packets[hold + 1][1]
    assert after.marker and not any(p.marker for _, p in packets[1:hold + 1])
    ts_step = (after.timestamp - before.timestamp) % 2**32
    assert abs(ts_step / 8000 - gaps[hold]) < 0.1  # the timestamp followed the clock (within a stated 100 ms)
    assert "on hold" in server.log_text() and "active" in server.log_text()
