"""RTCP on a real call: our sender reports decode in tshark and describe the caller's stream."""

import socket
import subprocess
import time

from telephony.rtp.packet import RtpPacket
from telephony.rtp.rtcp import SenderReport, parse_compound
from tests.sipmsg import request

from .conftest import require
from .raw_caller import answered_rtp_port, dial, to_tag


def test_sender_report_with_the_callers_loss_and_tshark_decodes_it(server, capture, tmp_path):
    media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media.bind(("127.0.0.1", 0))
    media.settimeout(2)
    mport = media.getsockname()[1]
    rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtcp.bind(("127.0.0.1", mport + 1))
    rtcp.settimeout(3)
    cap = capture(f"udp and dst host 127.0.0.1 and dst port {mport + 1}")
    sig = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sig.bind(("127.0.0.1", 0))
    sig.settimeout(2)
    dest = ("127.0.0.1", server.port)
    ok = dial(sig, server.port, "rtcp-1", mport)
    tag, rtp_port = to_tag(ok), answered_rtp_port(ok)
    sig.sendto(request("ACK", call_id="rtcp-1", cseq=1, to_tag=tag), dest)
    for seq in range(50):
        if seq in (10, 11, 30):
            continue  # three packets lost on the way
        media.sendto(RtpPacket(0, seq, 160 * seq, 0xABCD, b"\xff" * 160).serialize(), ("127.0.0.1", rtp_port))
        time.sleep(0.02)
    ours = RtpPacket.parse(media.recvfrom(2048)[0])
    # a session refresh (re-INVITE) in the middle must not disturb RTCP
    assert dial(sig, server.port, "rtcp-1", mport, to_tag=tag, cseq=2).cseq == (2, "INVITE")
    sig.sendto(request("ACK", call_id="rtcp-1", cseq=2, to_tag=tag, branch="z9hG4bKack2"), dest)
    sig.sendto(request("BYE", call_id="rtcp-1", cseq=3, to_tag=tag), dest)
    reports = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            reports += parse_compound(rtcp.recvfrom(2048)[0])
        except socket.timeout:
            break
        if reports:
            break
    cap.stop()
    for s in (media, rtcp, sig):
        s.close()
    srs = [r for r in reports if isinstance(r, SenderReport)]
    assert srs and srs[-1].ssrc == ours.ssrc and srs[-1].packets > 0
    (block,) = srs[-1].blocks
    assert block.ssrc == 0xABCD and block.cumulative_lost == 3 and block.highest_seq == 49
    time.sleep(0.2)
    assert "caller's stream 47 packets, 3 lost" in server.log_text()
    assert server.log_text().count(" media: ") == 1  # one summary, at the end of the call
    require("tshark")
    res = subprocess.run(["tshark", "-r", str(cap.path), "-d", f"udp.port=={mport + 1},rtcp",
                          "-T", "fields", "-e", "rtcp.pt"], capture_output=True, text=True, timeout=60)
    out = res.stdout
    assert "200" in out and "202" in out and "203" in out, (out, res.stderr, cap.path.stat().st_size)  # SR, SDES, BYE
