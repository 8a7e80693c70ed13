"""Placed calls driven by an application (issue 17's interfaces): `connect` (the application
talks over a WebSocket once the callee answers) and `webhook` (asked what to play while it
rings). SIPp answers; what it hears is checked by numbers."""

from __future__ import annotations

import json
import re
import socket
import time

import numpy as np
import pytest

from engine.audio import decode_g711
from telephony.rtp.packet import RtpPacket

from .api_support import ApiServer, start_api_server
from .test_ivr import best_match, rendered
from .test_outbound import assert_clean, place, sipp_done, uas, wait_log
from .webhook_app import Agent, Answer, Application

SECRET = "outbound-test-secret-0123"
HELLO = "Your parcel arrives on Friday between nine and noon."
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> ApiServer:
    srv = start_api_server(tmp_path_factory.mktemp("apps"), prompts=f"webhooks:\n  secret: {SECRET}\nroutes: []\n")
    yield srv
    srv.srv.stop()


def answered_audio(api: ApiServer, tmp_path, body: dict) -> tuple[str, np.ndarray]:
    """Place the call to SIPp (answers at once, our BYE ends it); the audio it was sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp:
        rtp.bind(("127.0.0.1", 0))
        rtp.settimeout(0.2)
        proc, port = uas(tmp_path, "uas_answer.xml", "-m", "1", "-key", "sink_port", str(rtp.getsockname()[1]),
                         "-key", "pt", "0", "-key", "codec", "PCMU")
        r = place(api, {"to": f"sip:callee@127.0.0.1:{port}", **body})
        assert r.status_code == 201, r.text
        payload = bytearray()
        while proc.poll() is None:
            try:
                payload += RtpPacket.parse(rtp.recvfrom(2048)[0]).payload
            except socket.timeout:
                pass
    sipp_done(proc, tmp_path)
    return r.json()["call_id"], decode_g711(bytes(payload), "PCMU").astype(float)


def test_connect_hands_the_answered_call_to_a_websocket(api, tmp_path):
    agent = Agent(HELLO).start()
    try:
        call_id, heard = answered_audio(api, tmp_path, {"connect": agent.url})
        [hs] = agent.handshakes
        assert hs["x-sip-tts-call-id"] == call_id
        kinds = [e["event"] for e in agent.events]
        assert kinds[0] == "start" and "speaking" in kinds and kinds[-1] == "idle"
        corr, _ = best_match(heard, rendered(api.srv, HELLO))
        assert corr > 0.9, corr
        assert_clean(api)
    finally:
        agent.stop()


def test_webhook_says_what_the_callee_hears(api, tmp_path):
    app = Application(SECRET, {"/calls": Answer(body=json.dumps({"steps": [{"say": HELLO}]}).encode())}).start()
    try:
        call_id, heard = answered_audio(api, tmp_path, {"webhook": f"{app.url}/calls"})
        [asked] = [r for r in app.received if r.path == "/calls"]
        assert asked.signed and asked.body["call_id"] == call_id
        corr, _ = best_match(heard, rendered(api.srv, HELLO))
        assert corr > 0.9, corr
        wait_log(api, rf"call {re.escape(call_id)}: ended")
        assert_clean(api)
    finally:
        app.stop()


def test_webhook_needs_a_secret(tmp_path):
    srv = start_api_server(tmp_path, prompts="routes: []\n")
    try:
        r = place(srv, {"to": "sip:a@127.0.0.1", "webhook": "http://127.0.0.1:9/x"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "webhook", r.text
    finally:
        srv.srv.stop()
