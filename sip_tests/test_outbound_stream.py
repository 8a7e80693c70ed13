"""A placed call followed and driven on its WebSocket from the moment POST /v1/calls answered
(before the far end answers), and a re-INVITE inside a placed call. SIPp is the far end; a
`websockets` client is the application. After every call the leak gauges are back at zero."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time

import httpx
import numpy as np

import pytest
import websockets

from engine.audio import decode_g711
from telephony.rtp.packet import RtpPacket

from .api_support import ApiServer, start_api_server
from .conftest import free_udp_port
from .live_support import assert_clean as assert_live_clean
from .live_support import ws_url
from .test_ivr import best_match, rendered
from .test_outbound import Callbacks, assert_clean, place, sipp_done, uas, wait_log

HELLO = "Hello, this is a test call. Your order has shipped."
pytestmark = pytest.mark.timeout(90)


CLOSED = free_udp_port()  # nothing listens: a TCP trunk there is refused at once


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> ApiServer:
    trunks = f"trunks:\n  dead:\n    address: 127.0.0.1:{CLOSED}\n    transport: TCP\n"
    srv = start_api_server(tmp_path_factory.mktemp("outbound_stream"), prompts="routes: []\n", extra_yaml=trunks)
    yield srv
    srv.srv.stop()


async def follow(api: ApiServer, call_id: str, on_event=None, timeout: float = 30) -> tuple[list[dict], int]:
    """Open the call's stream, send ``HELLO`` at once (the phone is still ringing), read every event
    until the server closes the socket; ``on_event(ws, event)`` may answer. (events, close code)."""
    events: list[dict] = []
    async with websockets.connect(ws_url(api, call_id)) as ws:
        try:
            await ws.send(json.dumps({"text": HELLO, "flush": True}))
        except websockets.ConnectionClosedOK:  # (a call over before the socket opened: told, closed)
            pass
        try:
            async with asyncio.timeout(timeout):
                async for raw in ws:
                    events.append(json.loads(raw))
                    if on_event is not None:
                        await on_event(ws, events[-1])
        except websockets.ConnectionClosedError:
            pass
    return events, ws.close_code


def assert_all_clean(api: ApiServer) -> None:
    """The outbound and live leak gauges at zero, and no placed call's progress held for a session."""
    assert_clean(api)
    assert_live_clean(api)
    text = httpx.get(f"{api.url}/metrics", timeout=5).text
    assert re.search(r"^sip_tts_live_placed_pending 0\.0$", text, re.M), text


def kinds(events: list[dict]) -> list[str]:
    return [e["event"] for e in events]


class Sink:
    """The far end's RTP port: every packet with its arrival time, read as it comes (a thread)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.packets: list[tuple[float, RtpPacket]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(2048)
            except socket.timeout:
                continue
            self.packets.append((time.monotonic(), RtpPacket.parse(data)))

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def pcm(self, codec: str) -> np.ndarray:
        return decode_g711(b"".join(p.payload for _, p in self.packets), codec).astype(float)


async def hang_up_when_idle(ws, event: dict) -> None:
    if event["event"] == "idle":
        await ws.send(json.dumps({"hangup": True}))


@pytest.mark.parametrize("codec,pt", [("PCMU", 0), ("PCMA", 8)])
def test_stream_opened_at_once_gets_ringing_answered_and_speaking(api, tmp_path, codec, pt):
    """The socket opens while SIPp rings (180, answer a second later); the text sent then is
    synthesised while it rings and spoken at the answer; the application hangs up when it is idle.
    Answered in PCMA (we offer PCMU first, and synthesised in it): the session moves to the call's
    PCMA audio, the application stays attached and what arrives is PCMA speech."""
    with Sink() as rtp:
        proc, port = uas(tmp_path, "uas_ring_answer.xml", "-key", "sink_port", str(rtp.port),
                         "-key", "pt", str(pt), "-key", "codec", codec)
        r = place(api, {"to": f"sip:callee@127.0.0.1:{port}", "steps": ["live"]})
        assert r.status_code == 201, r.text
        call_id = r.json()["call_id"]
        events, code = asyncio.run(follow(api, call_id, hang_up_when_idle))
        sipp_done(proc, tmp_path)
    assert kinds(events) == ["start", "ringing", "answered", "speaking", "idle", "ended"], events
    start, ringing, answered, speaking, _, ended = events
    assert start["call_id"] == call_id and start["dialed"] == "callee"
    assert (ringing["sip_status"], ringing["reason"]) == (180, "Ringing")
    assert (answered["sip_status"], answered["codec"]) == (200, codec)
    assert speaking["latency_ms"] is not None and speaking["engine_ms"] is not None
    print(f"\n{codec}: answer -> first speech frame {speaking['latency_ms']} ms (text sent while ringing; "
          f"engine's first audio {speaking['engine_ms']} ms after the text)")
    assert ended["reason"] == "app-hangup" and ended["utterances"] == 1 and code == 1000
    assert {p.payload_type for _, p in rtp.packets} == {pt}
    corr, _ = best_match(rtp.pcm(codec), rendered(api.srv, HELLO))  # the text, by its energy contour
    assert corr > 0.9, corr
    if codec == "PCMA":
        wait_log(api, rf"call {re.escape(call_id)}: live session moved to the call's PCMA audio")
    assert_all_clean(api)


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
    assert_all_clean(api)


def test_a_stream_closed_while_it_rings_cancels_the_call(api, tmp_path):
    """The application opens the stream, sees ``ringing`` and goes away without a word: the call
    has nothing left to say and nobody to drive it, so it is cancelled at once (SIPp, ringing with
    no answer, sees our CANCEL long before ring_timeout_s), the outcome ``cancelled`` goes to the
    status callback, and nothing is left behind."""
    callbacks = Callbacks()
    proc, port = uas(tmp_path, "uas_ring_cancel.xml")
    r = place(api, {"to": f"sip:someone@127.0.0.1:{port}", "steps": ["live"], "ring_timeout_s": 60,
                    "status_callback": callbacks.url})
    assert r.status_code == 201, r.text
    call_id = r.json()["call_id"]

    async def leave_when_ringing() -> tuple[list[dict], float]:
        events = []
        async with websockets.connect(ws_url(api, call_id)) as ws:
            async with asyncio.timeout(20):
                async for raw in ws:
                    events.append(json.loads(raw))
                    if events[-1]["event"] == "ringing":
                        break
        return events, time.monotonic()

    events, left = asyncio.run(leave_when_ringing())
    assert kinds(events) == ["start", "ringing"], events
    wait_log(api, rf"call {re.escape(call_id)}: cancelled \(487 ", timeout=20)
    took = time.monotonic() - left
    trace = sipp_done(proc, tmp_path)
    assert f"CANCEL sip:someone@127.0.0.1:{port}" in trace
    assert took < 15, took  # (wide for a loaded host; the ring timeout was 60 s)
    assert callbacks.events(until="cancelled") == ["initiated", "ringing", "cancelled"], callbacks.got
    assert callbacks.got[-1]["sip_status"] == 487
    wait_log(api, rf"call {re.escape(call_id)}: nothing to say before the answer: cancelling")
    assert_all_clean(api)


def test_text_sent_before_the_stream_closed_is_heard_then_the_call_ends(api, tmp_path):
    """The other side of the rule above: an application that says something and goes away while it
    rings leaves something to say. The call is not cancelled: SIPp answers a second later, hears the
    text, and our BYE ends the call once it has played."""
    callbacks = Callbacks()
    with Sink() as rtp:
        proc, port = uas(tmp_path, "uas_ring_answer.xml", "-key", "sink_port", str(rtp.port),
                         "-key", "pt", "0", "-key", "codec", "PCMU")
        r = place(api, {"to": f"sip:callee@127.0.0.1:{port}", "steps": ["live"], "status_callback": callbacks.url})
        assert r.status_code == 201, r.text
        call_id = r.json()["call_id"]

        async def say_and_leave() -> None:
            async with websockets.connect(ws_url(api, call_id)) as ws:
                await ws.send(json.dumps({"text": HELLO, "flush": True}))
                assert json.loads(await ws.recv())["event"] == "start"

        asyncio.run(say_and_leave())
        trace = sipp_done(proc, tmp_path)
    assert "CANCEL sip:" not in trace and "BYE sip:" in trace
    assert callbacks.events(until="ended") == ["initiated", "ringing", "answered", "ended"], callbacks.got
    assert callbacks.got[-1]["reason"] == "local-bye"  # (our BYE, once it had played)
    corr, _ = best_match(rtp.pcm("PCMU"), rendered(api.srv, HELLO))
    assert corr > 0.9, corr
    assert_all_clean(api)


def test_a_call_that_failed_before_the_stream_opened_still_tells_it(api):
    """A TCP trunk nobody listens on: the call is unreachable before the application's socket can
    open; the socket still gets the outcome (its SIP code) and ``ended``, and is closed."""
    r = place(api, {"to": "5550100", "trunk": "dead", "steps": ["live"]})
    assert r.status_code == 201, r.text
    call_id = r.json()["call_id"]
    wait_log(api, rf"call {re.escape(call_id)}: unreachable", timeout=10)
    events, close = asyncio.run(follow(api, call_id))
    assert kinds(events) == ["start", "unreachable", "ended"], events
    assert events[0]["call_id"] == call_id and events[1]["sip_status"] == 503 and close == 1000
    assert events[2]["reason"] == "unreachable"
    assert_all_clean(api)


@pytest.mark.parametrize("scenario,status", [("uas_reinvite.xml", 200), ("uas_reinvite_require.xml", 420)])
def test_reinvite_in_a_placed_call_gets_200_with_sdp_and_the_audio_goes_on(api, tmp_path, scenario, status):
    """SIPp answers, then re-INVITEs a second later (same stream, new o= version): it needs a 200
    whose SDP answers PCMU (its scenario checks), ACKs it, and our audio keeps arriving across it.
    A re-INVITE with ``Require: foo`` gets 420 with ``Unsupported: foo`` instead (as an inbound
    call's would), which SIPp ACKs; the call and its audio go on just the same."""
    long_text = " ".join([HELLO] * 2)
    with Sink() as rtp:
        proc, port = uas(tmp_path, scenario, "-key", "sink_port", str(rtp.port))
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
    assert kinds(events) == ["start", "answered", "speaking", "idle", "ended"], events
    reinvite = re.search(r"CSeq: 2 INVITE", trace)
    assert reinvite and f"SIP/2.0 {status} " in trace[reinvite.end():]
    if status == 200:
        wait_log(api, rf"call {re.escape(call_id)}: re-INVITE answered 200")
    else:  # one 420 (its ACK matched: no retransmission), and the call table never saw the offer
        assert trace.count("SIP/2.0 420 Bad Extension") >= 1 and "Unsupported: foo" in trace  # (resent until ACKed)
        assert not re.search(rf"call {re.escape(call_id)}: re-INVITE answered", api.srv.log_text())
    # the audio went on across the re-INVITE: one stream, no packet missing, no hole in the arrivals
    packets = [p for _, p in rtp.packets]
    times = [t for t, _ in rtp.packets]
    assert len(packets) > 150 and len({p.ssrc for p in packets}) == 1, len(packets)
    assert [(b.sequence - a.sequence) & 0xFFFF for a, b in zip(packets, packets[1:])] == [1] * (len(packets) - 1)
    gap = max(b - a for a, b in zip(times, times[1:]))
    assert gap < 0.5, gap  # (wide: a loaded host delays packets; a stream that stopped leaves seconds)
    corr, _ = best_match(rtp.pcm("PCMU"), rendered(api.srv, long_text))
    assert corr > 0.9, corr
    assert_all_clean(api)
