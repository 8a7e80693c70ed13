"""The API's streamed responses on the wire (raw sockets, espeak): the head and the first audio in one TCP
segment; a client that reads nothing holds the server's memory and loop to little, and its leaving still frees
the engine at once."""

from __future__ import annotations

import json
import select
import socket
import struct
import time
from pathlib import Path

import httpx
import pytest

from .api_support import api_server, speech

pytestmark = pytest.mark.timeout(120)
TCPI_DATA_SEGS_IN = 152  # struct tcp_info: segments with data received (Linux >= 4.6)


def _post(port: int, body: dict, rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:  # before connecting: the window it announces stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(data) + data)
    return sock


def _data_segments(sock: socket.socket) -> int:
    return struct.unpack_from("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256), TCPI_DATA_SEGS_IN)[0]


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_the_head_and_the_first_audio_arrive_in_one_segment(tmp_path):
    """The client's first receive holds the status line, the headers and audio, and the kernel counted one data
    segment for it (taken before and after the receive: a second segment arriving meanwhile makes that round
    inconclusive, and it is asked again)."""
    with api_server(tmp_path) as s:
        rounds = []
        for _ in range(10):
            sock = _post(s.port, speech("Hello there, one segment.", "pcm"))
            try:
                assert select.select([sock], [], [], 30)[0], "no answer in 30 s"
                before = _data_segments(sock)
                first = sock.recv(1 << 20)
                after = _data_segments(sock)
            finally:
                sock.close()
            rounds.append((before, after, len(first)))
            if before == after == 1:
                head, sep, body = first.partition(b"\r\n\r\n")
                assert sep and head.startswith(b"HTTP/1.1 200"), head[:100]
                assert b"transfer-encoding: chunked" in head.lower()
                size, crlf, audio = body.partition(b"\r\n")  # the first chunk's framing, then its audio
                assert crlf and int(size, 16) > 0 and len(audio) >= int(size, 16), body[:40]
                return
        pytest.fail(f"never one segment alone at the first receive (segments before / after, bytes): {rounds}")


def test_a_client_reading_nothing_holds_little_and_its_leaving_frees_the_engine(tmp_path):
    """A long utterance to a client that reads nothing: uvicorn stops writing at its high-water mark (the
    response waits; its audio is not copied into an ever-growing buffer), the loop answers others meanwhile,
    and when the stalled client leaves its synthesis is cancelled and its slot freed at once."""
    long_text = ("This sentence is here to keep the engine busy for a long while. " * 70)[:4096]
    with api_server(tmp_path, api_yaml="  max_concurrent: 2\n") as s:
        pid = s.srv.proc.pid
        httpx.post(s.url + "/v1/audio/speech", json=speech("Warm up.", "pcm"), timeout=30)
        rss_before = _rss_kb(pid)
        stalled = _post(s.port, speech(long_text, "pcm"), rcvbuf=4096)
        try:
            time.sleep(3.0)  # espeak makes minutes of audio in this time; the client reads none of it
            assert _metric(s.url, "sip_tts_api_active_requests") == 1
            t0 = time.monotonic()
            r = httpx.get(s.url + "/v1/models", timeout=30)  # the loop is not held by the stalled stream
            assert r.status_code == 200 and time.monotonic() - t0 < 5  # (wide: a loaded 2-core host)
            # at most the utterance's own audio as the engine made it (4096 characters: ~25 MB of float32 at
            # 22 kHz), not copies of it piling up in front of the socket
            grown_mb = (_rss_kb(pid) - rss_before) / 1024
            assert grown_mb < 120, grown_mb
        finally:
            stalled.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _metric(s.url, "sip_tts_api_active_requests") != 0:
            time.sleep(0.05)
        assert _metric(s.url, "sip_tts_api_active_requests") == 0
        assert _metric(s.url, "sip_tts_api_cancelled_total") == 1
