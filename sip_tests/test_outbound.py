"""Outbound calls (POST /v1/calls) to real far ends: SIPp as a trunk (digest, busy, decline, no
answer, a cps limit), baresip answering, an unreachable trunk. One server for the module (its
trunks point at ports reserved for the SIPp of each test); after every call, /metrics must show
no call, RTP port or I/O task left behind."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from engine.audio import decode_g711
from telephony.rtp.packet import RtpPacket

from .api_support import ApiServer, start_api_server
from .conftest import PEERS, ROOT, free_udp_port, require
from .test_baresip import best_correlation, read_wav
from .test_ivr import best_match

SCENARIOS = Path(__file__).parent / "scenarios"
TEXT = "Thank you for calling. This is a test of the media server."
# The text is a route's too: rendered into the prompt cache at start-up, as a notification's fixed
# text is after its first call (a first, streamed rendering differs from `sip-tts say` by sub-sample
# shifts at the engine's chunk joins, which a whole-prompt correlation punishes).
PROMPTS = f'routes:\n  "1000": "{TEXT}"\n'
pytestmark = pytest.mark.timeout(120)


class Ports:
    carrier = free_udp_port()  # SIPp with digest answers here
    limited = free_udp_port()  # a trunk of 1 call per second
    closed = free_udp_port()  # nothing listens: TCP connect refused


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> ApiServer:
    trunks = f"""trunks:
  carrier:
    address: 127.0.0.1:{Ports.carrier}
    username: trunkuser
    password: s3cret
  limited:
    address: 127.0.0.1:{Ports.limited}
    calls_per_second: 1
    number_format: "00{{digits}}"
  dead:
    address: 127.0.0.1:{Ports.closed}
    transport: TCP
"""
    srv = start_api_server(tmp_path_factory.mktemp("outbound"), extra_yaml=trunks, prompts=PROMPTS)
    wait_log(srv, "prompt cache: .* rendered")
    yield srv
    srv.srv.stop()


class Callbacks:
    """An HTTP receiver for status callbacks."""

    def __init__(self) -> None:
        got = self.got = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/status"

    def events(self, until: str, timeout: float = 20) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and until not in [e["event"] for e in self.got]:
            time.sleep(0.05)
        self.http.shutdown()
        return [e["event"] for e in self.got]


def uas(tmp_path: Path, scenario: str, *args: str, port: int | None = None) -> tuple[subprocess.Popen, int]:
    """SIPp as the far end of one call; its messages traced to sipp.log."""
    require("sipp")
    port = port or free_udp_port()
    proc = subprocess.Popen(
        ["sipp", "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(port), "-m", "1", "-nostdin",
         "-trace_msg", "-message_file", str(tmp_path / "sipp.log"), "-timeout", "40", "-timeout_error", *args],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # SIPp binds its port
    return proc, port


def sipp_done(proc: subprocess.Popen, tmp_path: Path, timeout: float = 40) -> str:
    """SIPp's exit (0: its scenario ran to the end) and its message trace."""
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-2000:]
    return (tmp_path / "sipp.log").read_text()


def place(api: ApiServer, body: dict) -> httpx.Response:
    return httpx.post(f"{api.url}/v1/calls", json=body, timeout=10)


def wait_log(api: ApiServer, pattern: str, timeout: float = 30) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, api.srv.log_text())
        if m:
            return m
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not in the log:\n{api.srv.log_text()[-3000:]}")


def assert_clean(api: ApiServer) -> None:
    """Nothing left behind: the gauges back to 0 (within a few seconds, for the last BYE/ACK)."""
    names = ("sip_tts_calls_active", "sip_tts_outbound_calls_active", "sip_tts_rtp_ports_in_use",
             "sip_tts_outbound_io_tasks")
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(f"{api.url}/metrics", timeout=5).text
        values = {n: float(re.search(rf"^{n} (\S+)$", text, re.M).group(1)) for n in names}
        if not any(values.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not any(values.values()), values


def record_rtp(sock: socket.socket, proc: subprocess.Popen) -> bytes:
    """The payload of every RTP packet until 1.5 s of quiet after the audio (or SIPp's end)."""
    sock.settimeout(0.5)
    payload = bytearray()
    quiet_since = None
    while True:
        try:
            data, _ = sock.recvfrom(2048)
            payload += RtpPacket.parse(data).payload
            quiet_since = None
        except socket.timeout:
            quiet_since = quiet_since or time.monotonic()
            if (payload and time.monotonic() - quiet_since > 1.5) or (not payload and proc.poll() is not None):
                return bytes(payload)


def reference(api: ApiServer, tmp_path: Path) -> np.ndarray:
    ref_path = tmp_path / "ref.wav"
    subprocess.run([sys.executable, "-m", "sip_tts.cli", "say", TEXT, "--out", str(ref_path),
                    "--config", str(api.srv.workdir / "server.yaml")], cwd=ROOT, check=True, capture_output=True)
    return read_wav(ref_path)


def test_digest_answer_records_the_prompt(api, tmp_path):
    """SIPp challenges (401), checks our digest answer, rings, answers; what arrives on the RTP
    port it named is the text of `sip-tts say` (correlation), and we hang up after it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp:
        rtp.bind(("127.0.0.1", 0))
        proc, _ = uas(tmp_path, "uas_digest_answer.xml", "-key", "rtp_port", str(rtp.getsockname()[1]),
                      port=Ports.carrier)
        status = Callbacks()
        r = place(api, {"to": "+1 555 0100", "trunk": "carrier", "say": TEXT, "status_callback": status.url})
        assert r.status_code == 201, r.text
        call_id = r.json()["call_id"]
        payload = record_rtp(rtp, proc)
    trace = sipp_done(proc, tmp_path)
    assert f"INVITE sip:+15550100@127.0.0.1:{Ports.carrier}" in trace and "Authorization: Digest" in trace
    assert "m=audio" in trace and "telephone-event/8000" in trace and "RTP/AVP 0 8 101" in trace
    assert "From: <sip:sip-tts@127.0.0.1>;tag=" in trace
    assert status.events(until="ended") == ["initiated", "ringing", "answered", "ended"]
    wait_log(api, rf"call {re.escape(call_id)}: ended")
    corr, _ = best_correlation(decode_g711(payload, "PCMU").astype(np.float64), reference(api, tmp_path))
    assert corr > 0.9, corr
    assert_clean(api)


def test_answer_in_pcma_remakes_the_audio(api, tmp_path):
    """We offer PCMU first and start the audio in it; the callee picks PCMA: the audio is made
    again in PCMA and what arrives (payload type 8) is the text."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp:
        rtp.bind(("127.0.0.1", 0))
        proc, port = uas(tmp_path, "uas_answer.xml", "-m", "1", "-key", "sink_port", str(rtp.getsockname()[1]),
                         "-key", "pt", "8", "-key", "codec", "PCMA")
        r = place(api, {"to": f"sip:callee@127.0.0.1:{port}", "say": TEXT})
        assert r.status_code == 201, r.text
        rtp.settimeout(5)
        first, _ = rtp.recvfrom(2048)
        payload = RtpPacket.parse(first).payload + record_rtp(rtp, proc)
    sipp_done(proc, tmp_path)
    assert RtpPacket.parse(first).payload_type == 8
    ref_path = tmp_path / "ref.wav"
    subprocess.run([sys.executable, "-m", "sip_tts.cli", "say", TEXT, "--codec", "PCMA", "--out", str(ref_path),
                    "--config", str(api.srv.workdir / "server.yaml")], cwd=ROOT, check=True, capture_output=True)
    # the speech's energy envelope, frame by frame (the same bytes read as μ-law score about 0.90)
    corr, lag = best_match(decode_g711(payload, "PCMA").astype(np.float64), read_wav(ref_path))
    assert corr > 0.99 and abs(lag) <= 320, (corr, lag)
    assert_clean(api)


def test_baresip_callee_hears_the_prompt(api, tmp_path):
    require("baresip")
    port = free_udp_port()
    rec = tmp_path / "rec.wav"
    bs = subprocess.Popen([str(PEERS / "baresip" / "answer_and_record.sh"), str(port), str(rec), "30"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert bs.stdout is not None and bs.stdout.readline().strip() == "ready"
    r = place(api, {"to": f"sip:callee@127.0.0.1:{port}", "say": TEXT})
    assert r.status_code == 201, r.text
    _, err = bs.communicate(timeout=60)
    assert bs.returncode == 0, err[-2000:]
    corr, _ = best_correlation(read_wav(rec), reference(api, tmp_path))
    assert corr > 0.9, corr
    assert_clean(api)


@pytest.mark.parametrize("scenario,code,outcome", [("uas_busy.xml", 486, "busy"), ("uas_decline.xml", 603, "declined")])
def test_refused(api, tmp_path, scenario, code, outcome):
    proc, port = uas(tmp_path, scenario)
    status = Callbacks()
    r = place(api, {"to": f"sip:someone@127.0.0.1:{port}", "say": "Hello.", "status_callback": status.url})
    assert r.status_code == 201, r.text
    trace = sipp_done(proc, tmp_path)
    assert trace.count("ACK sip:") == 1  # our transaction ACKed the final response
    assert status.events(until=outcome) == ["initiated", "trying", outcome]
    assert status.got[-1]["sip_status"] == code
    assert_clean(api)


def test_no_answer_is_cancelled(api, tmp_path):
    """The far end rings; after ring_timeout_s it sees our CANCEL (and answers 487)."""
    proc, port = uas(tmp_path, "uas_ring_cancel.xml")
    started = time.monotonic()
    r = place(api, {"to": f"sip:someone@127.0.0.1:{port}", "say": "Hello.", "ring_timeout_s": 1.5})
    assert r.status_code == 201, r.text
    trace = sipp_done(proc, tmp_path)
    assert "CANCEL sip:someone@" in trace and time.monotonic() - started >= 1.5
    wait_log(api, rf"call {re.escape(r.json()['call_id'])}: no_answer \(487")
    assert_clean(api)


def test_unreachable_trunk(api):
    """TCP to a port nobody listens on: connection refused, the call is unreachable at once."""
    r = place(api, {"to": "5550100", "trunk": "dead", "say": "Hello."})
    assert r.status_code == 201, r.text
    wait_log(api, rf"call {re.escape(r.json()['call_id'])}: unreachable", timeout=10)
    assert_clean(api)


def test_trunk_cps_limit(api, tmp_path):
    """A trunk at 1 call/s: the second call within the second is 429 and never reaches SIPp."""
    proc, _ = uas(tmp_path, "uas_busy.xml", port=Ports.limited)
    first = place(api, {"to": "+44 20 7946 0000", "trunk": "limited", "say": "Hello."})
    second = place(api, {"to": "+44 20 7946 0001", "trunk": "limited", "say": "Hello."})
    assert first.status_code == 201, first.text
    assert second.status_code == 429 and second.json()["error"]["code"] == "trunk_cps", second.text
    trace = sipp_done(proc, tmp_path)
    assert trace.count("INVITE sip:") == 1 and "INVITE sip:00442079460000@" in trace
    time.sleep(0.5)  # the SIPp instance is gone: nothing else may have reached its port
    assert_clean(api)


@pytest.mark.parametrize("body,param", [
    ({"to": "+1555", "say": "x", "trunk": "nope"}, "trunk"),
    ({"to": "sip:a@127.0.0.1", "say": "x", "steps": [{"say": "y"}]}, "body"),
    ({"to": "sip:a@127.0.0.1", "steps": [{"say": {"text": "y", "voice": "nobody"}}]}, "steps.0.say.voice"),
    ({"to": "not a number", "say": "x", "trunk": "carrier"}, "to"),
    ({"to": "sip:a@127.0.0.1", "webhook": "http://127.0.0.1:1/hook"}, "webhook"),
])
def test_bad_requests_name_the_field(api, body, param):
    r = place(api, body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_cli_call_follows_the_call(api, tmp_path):
    """`sip-tts call` places the call through the API and prints its steps to the outcome."""
    proc, port = uas(tmp_path, "uas_busy.xml")
    res = subprocess.run([sys.executable, "-m", "sip_tts.cli", "call", f"sip:someone@127.0.0.1:{port}", "--say",
                          "Hello.", "--config", str(api.srv.workdir / "server.yaml")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    sipp_done(proc, tmp_path)
    assert res.returncode == 1, res.stderr  # not answered
    lines = res.stdout.splitlines()
    assert lines[0].endswith("@sip-tts") and lines[1:] == ["  initiated", "  trying (100 Trying)",
                                                           "  busy (486 Busy Here)"], res.stdout
