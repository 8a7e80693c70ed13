"""Outbound calls (POST /v1/calls) to real far ends: SIPp as a trunk (digest, busy, decline, no
answer, a cps limit), baresip answering, an unreachable trunk. Every call must end cleanly:
/metrics shows no call, RTP port or I/O task left behind."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from engine.audio import decode_g711
from telephony.rtp.packet import RtpPacket

from .api_support import start_api_server
from .conftest import PEERS, ROOT, free_udp_port, require
from .test_baresip import best_correlation, read_wav

SCENARIOS = Path(__file__).parent / "scenarios"
TEXT = "Thank you for calling. This is a test of the media server."
# The text is a route's too: rendered into the prompt cache at start-up, as a notification's fixed
# text would be after its first call (a first, streamed rendering differs from `sip-tts say` by
# sub-sample shifts at the engine's chunk joins, which a whole-prompt correlation punishes).
PROMPTS = f'routes:\n  "1000": "{TEXT}"\n'


def trunk_yaml(port: int, **fields: object) -> str:
    lines = [f"    address: 127.0.0.1:{port}"] + [f"    {k}: {v}" for k, v in fields.items()]
    return "trunks:\n  carrier:\n" + "\n".join(lines) + "\n"


def uas(tmp_path: Path, scenario: str, *args: str) -> tuple[subprocess.Popen, int]:
    """SIPp as the far end of one call on a port of its own; its messages traced to sipp.log."""
    require("sipp")
    port = free_udp_port()
    proc = subprocess.Popen(
        ["sipp", "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(port), "-m", "1", "-nostdin",
         "-trace_msg", "-message_file", str(tmp_path / "sipp.log"), "-timeout", "40", "-timeout_error", *args],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # SIPp binds its port
    return proc, port


def place(api, body: dict) -> httpx.Response:
    return httpx.post(f"{api.url}/v1/calls", json=body, timeout=10)


def wait_log(srv, pattern: str, timeout: float = 30) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, srv.log_text())
        if m:
            return m
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not in the log:\n{srv.log_text()[-3000:]}")


def assert_clean(api) -> None:
    """Nothing left behind (gauges back to 0), given a few seconds for the last BYE/ACK."""
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


def ended(proc: subprocess.Popen, timeout: float = 40) -> str:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-2000:]
    return (Path(proc.args[proc.args.index("-message_file") + 1])).read_text()


@pytest.mark.timeout(90)
def test_digest_answer_records_the_prompt(tmp_path):
    """SIPp challenges (401), checks our digest answer, answers; what arrives on the RTP port it
    named is the text of `sip-tts say`, by correlation, and we hang up after it."""
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtp.settimeout(0.5)
    proc, port = uas(tmp_path, "uas_digest_answer.xml", "-key", "rtp_port", str(rtp.getsockname()[1]))
    api = start_api_server(tmp_path / "srv", extra_yaml=trunk_yaml(port, username="trunkuser", password="s3cret"),
                           prompts=PROMPTS)
    try:
        wait_log(api.srv, "prompt cache: .* rendered")
        r = place(api, {"to": "+1 555 0100", "say": TEXT})
        assert r.status_code == 201, r.text
        call_id = r.json()["call_id"]
        payload = bytearray()
        quiet_since = None
        while True:
            try:
                data, _ = rtp.recvfrom(2048)
                payload += RtpPacket.parse(data).payload
                quiet_since = None
            except socket.timeout:
                quiet_since = quiet_since or time.monotonic()
                if payload and time.monotonic() - quiet_since > 1.5:
                    break
                if not payload and proc.poll() is not None:
                    break
        trace = ended(proc)
        assert "INVITE sip:+15550100@127.0.0.1:%d" % port in trace and "Authorization: Digest" in trace
        wait_log(api.srv, rf"call {re.escape(call_id)}: ended")
        ref_path = tmp_path / "ref.wav"
        subprocess.run([sys.executable, "-m", "sip_tts.cli", "say", TEXT, "--out", str(ref_path),
                        "--config", str(api.srv.workdir / "server.yaml")], cwd=ROOT, check=True, capture_output=True)
        rec = decode_g711(bytes(payload), "PCMU").astype(np.float64)
        corr, _ = best_correlation(rec, read_wav(ref_path))
        assert corr > 0.9, corr
        assert_clean(api)
    finally:
        api.srv.stop()
        proc.kill()
