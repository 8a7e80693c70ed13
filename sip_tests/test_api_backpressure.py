"""The API's streamed responses under a client that reads nothing (raw sockets, espeak): it holds the server's
memory and loop to little, and its leaving still frees the engine at once."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from .api_support import api_server, metric, speech

pytestmark = pytest.mark.timeout(120)


def _post(port: int, body: dict, rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:  # before connecting: the window it announces stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(data) + data)
    return sock


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


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
            assert metric(s.url, "sip_tts_api_active_requests") == 1
            t0 = time.monotonic()
            r = httpx.get(s.url + "/v1/models", timeout=30)  # the loop is not held by the stalled stream
            assert r.status_code == 200 and time.monotonic() - t0 < 5  # (wide: a loaded 2-core host)
            # the engine is held back with the response: the whole utterance made and queued would be ~21 MB
            # of float32 at 22 kHz plus ~11 MB as the s16 response; measured here: ~2 MB
            grown_mb = (_rss_kb(pid) - rss_before) / 1024
            assert grown_mb < 24, grown_mb
        finally:
            stalled.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and metric(s.url, "sip_tts_api_active_requests") != 0:
            time.sleep(0.05)
        assert metric(s.url, "sip_tts_api_active_requests") == 0
        assert metric(s.url, "sip_tts_api_cancelled_total") == 1
