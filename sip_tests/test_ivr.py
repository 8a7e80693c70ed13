"""Scripts on real calls: a SIPp caller walks a menu with RFC 4733 DTMF, a cached prompt
starts on the wire within a frame of the ACK, early media plays in 183 and ends in 480."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import numpy as np

from config import load_server
from engine.audio import decode_g711
from sip_tts.cli import render
from sip_tts.engines import build_engine
from telephony.rtp.packet import RtpPacket
from telephony.sip.message import Response, parse_message
from tests.sipmsg import LOOPBACK, invite, offer, request

from .pcap import read_udp
from .raw_caller import dial, to_tag, wait_for
from .test_dtmf_calls import sipp_dtmf

MENU = "For sales press one. For support press two."
SALES = "All our sales people are busy. Please call again later."
SUPPORT = "Support is closed today."
IVR = f"""
routes:
  - number: "3000"
    script: main
  - number: "4999"
    early_media: true
    say: "The number you have dialed is not in service."
scripts:
  main:
    - menu:
        prompt: "{MENU}"
        options: {{"1": sales, "2": support}}
        timeout_s: 5
  sales:
    - say: "{SALES}"
    - hangup
  support:
    - say: "{SUPPORT}"
    - hangup
default:
  say: "Hello."
"""


def udp(timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((LOOPBACK, 0))
    s.settimeout(timeout)
    return s


def rendered(srv, text: str) -> np.ndarray:
    engine, voice = build_engine(load_server(srv.workdir / "server.yaml"))
    return asyncio.run(render(engine, voice, text, "PCMU")).astype(float)


def envelope(x: np.ndarray) -> np.ndarray:
    """Log energy per 20 ms frame: espeak-ng's waveform differs from one rendering to the next
    (its glottal source keeps phase across utterances), its energy contour does not."""
    n = len(x) // 160
    return np.log10(np.sqrt(np.mean(x[:n * 160].reshape(n, 160) ** 2, axis=1)) + 1.0)


def best_match(received: np.ndarray, prompt: np.ndarray, frames: int = 60) -> tuple[float, int]:
    """Correlation of the prompt's first ``frames`` energy frames with the received audio's, at
    every frame lag: (peak, lag in samples)."""
    rx, probe = envelope(received), envelope(prompt)[:frames]
    best, lag = -1.0, -1
    for start in range(0, len(rx) - len(probe)):
        c = float(np.corrcoef(rx[start:start + len(probe)], probe)[0, 1])
        if c > best:
            best, lag = c, start * 160
    return best, lag


def test_sipp_caller_walks_the_menu_with_dtmf(start_server, capture, tmp_path):
    srv = start_server(prompts=IVR)
    cap = capture("udp and dst host 127.0.0.1 and dst port 18300")
    res = subprocess_sipp(srv, tmp_path)
    cap.stop()
    assert res.returncode == 0, res.stdout[-2000:]
    log = srv.log_text()
    assert "menu choice 1 -> sales" in log and "barge-in by 1" in log
    payload = b"".join(RtpPacket.parse(p.payload).payload for p in read_udp(cap.path))
    received = decode_g711(payload, "PCMU").astype(float)
    menu_c, menu_at = best_match(received, rendered(srv, MENU))
    sales_c, sales_at = best_match(received, rendered(srv, SALES))
    support_c, _ = best_match(received, rendered(srv, SUPPORT))
    print(f"\nmenu: corr {menu_c:.3f} at {menu_at / 8000:.2f} s; sales: corr {sales_c:.3f} at {sales_at / 8000:.2f} s; "
          f"support: corr {support_c:.3f}")
    assert menu_c > 0.9 and sales_c > 0.9  # the prompts themselves, after the G.711 round trip
    assert support_c < sales_c - 0.1  # the other branch was not played
    assert menu_at < sales_at  # in the right order
    assert 0.8 < (sales_at - menu_at) / 8000 < 1.6  # the digit (sent at 1 s) cut the menu prompt short


def subprocess_sipp(srv, tmp_path):
    return sipp_dtmf(srv, tmp_path, 18300, 18300)


def test_cached_prompt_starts_within_a_frame_of_the_ack(start_server):
    srv = start_server(prompts='routes:\n  "1000": "Your appointment is confirmed for Tuesday."\n')
    sig, media = udp(3), udp(3)  # SIP, and where our RTP goes
    delays, firsts = [], []
    for n in range(4):  # the first call renders the prompt (or the start-up warm-up did); all later ones hit
        call_id = f"cached-{n}"
        ok = dial(sig, srv.port, call_id, media.getsockname()[1])
        t_ack = time.perf_counter()
        sig.sendto(request("ACK", call_id, cseq=1, to_tag=to_tag(ok)), ("127.0.0.1", srv.port))
        data = media.recv(2048)
        t_first = time.perf_counter()
        pkt = RtpPacket.parse(data)
        delays.append(t_first - t_ack)
        firsts.append(decode_g711(pkt.payload, "PCMU").astype(float))
        sig.sendto(request("BYE", call_id, cseq=2, to_tag=to_tag(ok)), ("127.0.0.1", srv.port))
        wait_for(sig, "BYE")
        while True:  # drain what the call still sent
            try:
                media.settimeout(0.05)
                media.recv(2048)
            except socket.timeout:
                media.settimeout(3)
                break
    print(f"\nACK -> first RTP packet: {[round(d * 1000, 1) for d in delays]} ms")
    # cached: the first packet goes at once after the ACK, or at the next 20 ms slot (design); the margin is
    # stated and wide for a loaded CI host: 100 ms (rendering the prompt would take far longer)
    assert max(delays[1:]) <= 0.100
    for f in firsts[2:]:  # cache hits: the same frames every time (what the cache holds)
        assert np.array_equal(f, firsts[1])


def test_early_media_plays_in_183_then_480(start_server):
    srv = start_server(prompts=IVR)
    sig, media = udp(10), udp(10)  # SIP, and where our RTP goes
    sig.sendto(invite(call_id="early-1", user="4999", sdp=offer(LOOPBACK, media.getsockname()[1]), host=LOOPBACK),
               ("127.0.0.1", srv.port))
    statuses = []
    while True:
        msg = parse_message(sig.recvfrom(65535)[0])
        if isinstance(msg, Response):
            statuses.append(msg.status)
            if msg.status == 183:
                assert b"m=audio" in msg.body
                first = RtpPacket.parse(media.recv(2048))  # audio flows before any answer
                assert first.marker
            if msg.status >= 200:
                break
    assert statuses[-1] == 480 and 183 in statuses and 200 not in statuses


def _menu(target_text: str) -> str:
    return f"""
routes:
  - number: "3000"
    script: main
scripts:
  main:
    - menu:
        prompt: "Press one."
        options: {{"1": next}}
        timeout_s: 10
  next:
    - say: "{target_text}"
    - hangup
"""


def _press(sig, port: int, call_id: str, tag: str, digit: str, cseq: int) -> None:
    body = f"Signal={digit}\r\nDuration=160\r\n".encode()
    info = request("INFO", call_id=call_id, cseq=cseq, to_tag=tag, extra="Content-Type: application/dtmf-relay\r\n")
    sig.sendto(info.replace(b"Content-Length: 0\r\n\r\n", b"Content-Length: %d\r\n\r\n" % len(body) + body),
               ("127.0.0.1", port))
    wait_for(sig, "INFO", 200)


def test_reload_command_keeps_calls_in_progress_on_their_script(start_server, tmp_path):
    import subprocess
    import sys

    pid_file = tmp_path / "sip-tts.pid"
    srv = start_server(prompts=_menu("Old branch."), args=("--pid-file", str(pid_file)))
    sig = udp(5)
    ok = dial(sig, srv.port, "before-reload", 18400, user="3000")
    sig.sendto(request("ACK", "before-reload", cseq=1, to_tag=to_tag(ok)), ("127.0.0.1", srv.port))
    (srv.workdir / "prompts.yaml").write_text(_menu("New branch.").replace("next", "fresh"))

    def reload() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sip_tts.cli", "reload", "--pid-file", str(pid_file)],
                              capture_output=True, text=True, timeout=30)

    assert reload().returncode == 0
    time.sleep(0.5)
    assert "reloaded" in srv.log_text()
    _press(sig, srv.port, "before-reload", to_tag(ok), "1", 2)  # the call that started before the reload
    ok2 = dial(sig, srv.port, "after-reload", 18402, user="3000")
    sig.sendto(request("ACK", "after-reload", cseq=1, to_tag=to_tag(ok2)), ("127.0.0.1", srv.port))
    _press(sig, srv.port, "after-reload", to_tag(ok2), "1", 2)
    time.sleep(0.3)
    log = srv.log_text()
    assert "call before-reload: menu choice 1 -> next" in log  # its script from before the reload
    assert "call after-reload: menu choice 1 -> fresh" in log  # new calls get the new file
    (srv.workdir / "prompts.yaml").write_text("routes: [broken\n")
    assert reload().returncode == 0
    time.sleep(0.5)
    assert "reload refused" in srv.log_text() and srv.proc.poll() is None
    for call_id, resp in (("before-reload", ok), ("after-reload", ok2)):
        sig.sendto(request("BYE", call_id, cseq=3, to_tag=to_tag(resp)), ("127.0.0.1", srv.port))
