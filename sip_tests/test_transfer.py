"""Blind transfer (REFER, RFC 3515), SIPp as the transferee: its NOTIFY says 200 (the call ends)
or 486 (the call stays up); calls we placed and calls that came in; through the API and as a
script step."""

from __future__ import annotations

import re
import time

import subprocess

import httpx
import pytest

from .api_support import ApiServer, start_api_server
from .conftest import free_udp_port
from .test_outbound import SCENARIOS, assert_clean, place, sipp_done, uas, wait_log

LONG = "This is a long announcement that keeps the line busy for a while. " * 3
AGENT = "sip:agent@127.0.0.1:5999"
PROMPTS = f"""
routes:
  - number: "7000"
    steps:
      - say: "Please hold."
      - transfer: {AGENT}
      - say: "Sorry, nobody can take your call."
  - number: "7001"
    say: "{LONG}"
"""
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> ApiServer:
    srv = start_api_server(tmp_path_factory.mktemp("transfer"), prompts=PROMPTS)
    yield srv
    srv.srv.stop()


def answered_call(api: ApiServer, tmp_path, frag: str, body: dict):
    proc, port = uas(tmp_path, "uas_refer.xml", "-key", "rtp_port", "9", "-key", "frag", frag)
    r = place(api, {"to": f"sip:transferee@127.0.0.1:{port}", **body})
    assert r.status_code == 201, r.text
    call_id = r.json()["call_id"]
    wait_log(api, rf"call {re.escape(call_id)}: answered")
    return proc, call_id


def transfer(api: ApiServer, call_id: str) -> httpx.Response:
    return httpx.post(f"{api.url}/v1/calls/{call_id}/transfer", json={"target": AGENT}, timeout=40)


def active(api: ApiServer) -> float:
    text = httpx.get(f"{api.url}/metrics", timeout=5).text
    return float(re.search(r"^sip_tts_calls_active (\S+)$", text, re.M).group(1))


def test_transfer_succeeds_and_the_call_ends(api, tmp_path):
    proc, call_id = answered_call(api, tmp_path, "SIP/2.0 200 OK", {"say": LONG})
    r = transfer(api, call_id)
    assert r.status_code == 200 and r.json()["outcome"] == "succeeded" and r.json()["sip_status"] == 200, r.text
    trace = sipp_done(proc, tmp_path)
    refer = trace[trace.index("REFER sip:"):]
    assert f"Refer-To: <{AGENT}>" in refer and "Referred-By: <sip:" in refer
    wait_log(api, rf"{re.escape(call_id)} to \S+ ended: transferred")
    assert_clean(api)


def test_failed_transfer_keeps_the_call(api, tmp_path):
    proc, call_id = answered_call(api, tmp_path, "SIP/2.0 486 Busy Here", {"say": LONG})
    r = transfer(api, call_id)
    assert r.status_code == 200 and r.json() == {"call_id": call_id, "outcome": "failed", "sip_status": 486,
                                                 "reason": "Busy Here"}, r.text
    assert active(api) == 1  # still up, still talking
    sipp_done(proc, tmp_path)  # our BYE came at the end of the prompt
    wait_log(api, rf"{re.escape(call_id)} to \S+ ended: prompt-done")
    assert_clean(api)


def test_transfer_step_failure_goes_on_with_the_script(api, tmp_path):
    steps = [{"say": "Please hold."}, {"transfer": AGENT}, {"say": "Sorry, nobody can take your call."}]
    proc, call_id = answered_call(api, tmp_path, "SIP/2.0 486 Busy Here", {"steps": steps})
    sipp_done(proc, tmp_path)
    log = api.srv.log_text()
    assert f"call {call_id}: transfer to {AGENT} failed (486 Busy Here)" in log
    wait_log(api, rf"{re.escape(call_id)} to \S+ ended: prompt-done")
    assert_clean(api)


def test_transfer_of_unknown_call_is_404(api):
    r = transfer(api, "nope@sip-tts")
    assert r.status_code == 404 and r.json()["error"]["param"] == "call_id", r.text


def caller(api: ApiServer, tmp_path, number: str, frag: str) -> subprocess.Popen:
    """SIPp calling in, as the transferee (uac_refer.xml)."""
    return subprocess.Popen(
        ["sipp", api.srv.uri_host, "-sf", str(SCENARIOS / "uac_refer.xml"), "-s", number, "-i", "127.0.0.1",
         "-p", str(free_udp_port()), "-m", "1", "-nostdin", "-key", "frag", frag, "-trace_msg", "-message_file",
         str(tmp_path / "sipp.log"), "-timeout", "40", "-timeout_error"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_inbound_call_transfer_step_succeeds(api, tmp_path):
    """A caller's script ends with a transfer: REFER in the UA's dialog, NOTIFY 200, our BYE."""
    proc = caller(api, tmp_path, "7000", "SIP/2.0 200 OK")
    trace = sipp_done(proc, tmp_path)
    refer = trace[trace.index("REFER sip:sipp@"):]
    assert f"Refer-To: <{AGENT}>" in refer and "Referred-By: <sip:7000@" in refer
    wait_log(api, r"call \S+ to 7000 ended: transferred")
    assert re.search(r"call \S+: transfer succeeded \(200 OK\)", api.srv.log_text())
    assert_clean(api)


def test_inbound_call_transfer_by_api_fails_and_the_call_goes_on(api, tmp_path):
    proc = caller(api, tmp_path, "7001", "SIP/2.0 486 Busy Here")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (tmp_path / "sipp.log").exists() or \
            "SIP/2.0 200 OK" not in (tmp_path / "sipp.log").read_text():
        time.sleep(0.1)
    call_id = re.search(r"^Call-ID: (\S+)", (tmp_path / "sipp.log").read_text(), re.M).group(1)
    r = transfer(api, call_id)
    assert r.status_code == 200 and r.json()["outcome"] == "failed" and r.json()["sip_status"] == 486, r.text
    assert active(api) == 1  # still up, still talking
    sipp_done(proc, tmp_path)  # our BYE at the end of the prompt
    wait_log(api, rf"{re.escape(call_id)} to 7001 ended: prompt-done")
    assert_clean(api)
