"""A placed call followed and driven on its WebSocket from the moment POST /v1/calls answered
(before the far end answers), and a re-INVITE inside a placed call. SIPp is the far end; a
`websockets` client is the application. After every call the leak gauges are back at zero."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time

import pytest
import websockets

from engine.audio import decode_g711
from telephony.rtp.packet import RtpPacket

from .api_support import ApiServer, start_api_server
from .live_support import assert_clean as assert_live_clean
from .live_support import ws_url
from .test_outbound import assert_clean, place, sipp_done, uas, wait_log

HELLO = "Hello, this is a test call. Your order has shipped."
pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> ApiServer:
    srv = start_api_server(tmp_path_factory.mktemp("outbound_stream"), prompts="routes: []\n")
    yield srv
    srv.srv.stop()


async def follow(api: ApiServer, call_id: str, on_event=None, timeout: float = 30) -> tuple[list[dict], int]:
    """Open the call's stream, send ``HELLO`` at once (the phone is still ringing), read every event
    until the server closes the socket; ``on_event(ws, event)`` may answer. (events, close code)."""
    events: list[dict] = []
    async with websockets.connect(ws_url(api, call_id)) as ws:
        await ws.send(json.dumps({"text": HELLO, "flush": True}))
        try:
            async with asyncio.timeout(timeout):
                async for raw in ws:
                    events.append(json.loads(raw))
                    if on_event is not None:
                        await on_event(ws, events[-1])
        except websockets.ConnectionClosedError:
            pass
    return events, ws.close_code


def kinds(events: list[dict]) -> list[str]:
    return [e["event"] for e in events]


def sink() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sock


def received(sock: socket.socket) -> list[tuple[float, bytes]]:
    """(arrival time, payload) of every RTP packet waiting on ``sock``."""
    sock.setblocking(False)
    out = []
    while True:
        try:
            data = sock.recv(2048)
        except BlockingIOError:
            return out
        out.append((time.monotonic(), RtpPacket.parse(data).payload))


async def hang_up_when_idle(ws, event: dict) -> None:
    if event["event"] == "idle":
        await ws.send(json.dumps({"hangup": True}))


def test_stream_opened_at_once_gets_ringing_answered_and_speaking(api, tmp_path):
    """The socket opens while SIPp rings (180, answer a second later); the text sent then is
    synthesised while it rings and spoken at the answer; the application hangs up when it is idle."""
    with sink() as rtp:
        proc, port = uas(tmp_path, "uas_ring_answer.xml", "-key", "sink_port", str(rtp.getsockname()[1]))
        r = place(api, {"to": f"sip:callee@127.0.0.1:{port}", "steps": ["live"]})
        assert r.status_code == 201, r.text
        call_id = r.json()["call_id"]
        events, code = asyncio.run(follow(api, call_id, hang_up_when_idle))
        sipp_done(proc, tmp_path)
        audio = b"".join(p for _, p in received(rtp))
    assert kinds(events) == ["start", "ringing", "answered", "speaking", "idle", "ended"], events
    start, ringing, answered, speaking, _, ended = events
    assert start["call_id"] == call_id and start["dialed"] == "callee"
    assert (ringing["sip_status"], ringing["reason"]) == (180, "Ringing")
    assert (answered["sip_status"], answered["codec"]) == (200, "PCMU")
    assert speaking["latency_ms"] is not None and speaking["engine_ms"] is not None
    assert ended["reason"] == "app-hangup" and ended["utterances"] == 1 and code == 1000
    pcm = decode_g711(audio, "PCMU")
    assert len(pcm) > 8000 and abs(pcm.astype(float)).mean() > 100  # a second and more of speech arrived
    assert_clean(api)
    assert_live_clean(api)


@pytest.mark.parametrize("scenario,ring_s,outcome,code", [
    ("uas_ring_busy.xml", None, "busy", 486),
    ("uas_ring_cancel.xml", 1.5, "no_answer", 487),
])
def test_an_outcome_before_the_answer_ends_the_stream(api, tmp_path, scenario, ring_s, outcome, code):
    """Busy after ringing, or no answer (we CANCEL after ring_timeout_s): the outcome event with its
    SIP code, then ``ended``, and the server closes the socket (1000)."""
    proc, port = uas(tmp_path, scenario)
    body = {"to": f"sip:someone@127.0.0.1:{port}", "steps": ["live"]}
    if ring_s:
        body["ring_timeout_s"] = ring_s
    r = place(api, body)
    assert r.status_code == 201, r.text
    events, close = asyncio.run(follow(api, r.json()["call_id"]))
    trace = sipp_done(proc, tmp_path)
    assert kinds(events) == ["start", "ringing", outcome, "ended"], events
    assert events[2]["sip_status"] == code and events[3]["reason"] == outcome and close == 1000
    assert events[3]["utterances"] <= 1  # (the text sent while it rang was synthesised, never heard)
    if outcome == "no_answer":
        assert "CANCEL sip:someone@" in trace
    assert_clean(api)
    assert_live_clean(api)


def test_reinvite_in_a_placed_call_gets_200_with_sdp_and_the_audio_goes_on(api, tmp_path):
    """SIPp answers, then re-INVITEs a second later (same stream, new o= version): it needs a 200
    whose SDP answers PCMU (its scenario checks), ACKs it, and our audio keeps arriving across it."""
    long_text = " ".join([HELLO] * 2)
    with sink() as rtp:
        proc, port = uas(tmp_path, "uas_reinvite.xml", "-key", "sink_port", str(rtp.getsockname()[1]))
        r = place(api, {"to": f"sip:callee@127.0.0.1:{port}", "steps": ["live"]})
        assert r.status_code == 201, r.text
        call_id = r.json()["call_id"]

        async def application() -> list[dict]:
            events = []
            async with websockets.connect(ws_url(api, call_id)) as ws:
                await ws.send(json.dumps({"text": long_text, "flush": True}))
                async with asyncio.timeout(40):
                    async for raw in ws:
                        events.append(json.loads(raw))
                        if events[-1]["event"] == "idle":
                            await ws.send(json.dumps({"hangup": True}))
            return events

        events = asyncio.run(application())
        trace = sipp_done(proc, tmp_path)
        packets = received(rtp)
    assert kinds(events) == ["start", "answered", "speaking", "idle", "ended"], events
    reinvite = re.search(r"CSeq: 2 INVITE", trace)
    assert reinvite and "SIP/2.0 200 OK" in trace[reinvite.end():]
    wait_log(api, rf"call {re.escape(call_id)}: re-INVITE answered 200")
    # the audio went on across the re-INVITE: no hole in the arrivals, and more than 2 s of it
    times = [t for t, _ in packets]
    assert len(packets) > 100, len(packets)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) < 0.5, max(gaps)  # (wide: a loaded host delays packets, a lost stream stops them)
    assert_clean(api)
    assert_live_clean(api)
