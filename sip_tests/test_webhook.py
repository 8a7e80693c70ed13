"""Webhook routes with real peers: SIPp calls in, a real HTTP application (webhook_app.py) says
what the call plays; the audio is checked by numbers against `sip-tts say`'s rendering, the
signature by the application, and every failure path against the server's counters."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np

from engine.audio import decode_g711
from telephony.rtp.packet import RtpPacket
from tests.sipmsg import LOOPBACK, invite, offer, request

from .conftest import free_udp_port, run_sipp
from .pcap import read_udp
from .raw_caller import to_tag, wait_for
from .test_ivr import best_match, rendered
from .test_metrics import get
from .webhook_app import Agent, Answer, Application, signature_ok

SECRET = "webhook-test-secret-0123"
HELLO = "Your order has shipped. It arrives on Friday."
SORRY = "Sorry, please call again later."
EXPECT_480 = str(Path(__file__).parent / "scenarios" / "uac_expect_480.xml")


def prompts(app: Application) -> str:
    def route(number: str, path: str, more: str = "") -> str:
        return f'  - number: "{number}"\n    webhook: {app.url}{path}\n    status_url: {app.url}/status\n{more}'

    fallback = "    fallback: sorry\n"
    return (f"webhooks:\n  secret: {SECRET}\n  timeout_s: 1.5\nroutes:\n"
            + route("4001", "/steps")
            + route("4002", "/slow", fallback + "    webhook_timeout_s: 0.5\n")
            + route("4003", "/garbage", fallback) + route("4004", "/error", fallback)
            + route("4005", "/invalid", fallback) + route("4006", "/error") + route("4008", "/noagent")
            + route("4009", "/think", "    webhook_timeout_s: 10\n")
            + route("4007", "/closed").replace(app.url, f"http://127.0.0.1:{free_udp_port()}", 1)
            + f'scripts:\n  sorry:\n    - say: "{SORRY}"\n')


def metrics(port: int) -> dict[str, float]:
    status, text = get(port, "/metrics")
    assert status == 200
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def sockets(pid: int) -> int:
    fd = Path(f"/proc/{pid}/fd")
    return sum(1 for f in fd.iterdir() if os.readlink(f).startswith("socket:"))


def serve(start_server, app: Application) -> tuple[object, int]:
    api = free_udp_port()
    srv = start_server(extra_yaml=f"api:\n  listen: 127.0.0.1:{api}\n", prompts=prompts(app))
    return srv, api


def settled(srv, api: int, fds: int, timeout: float = 10) -> dict[str, float]:
    """The counters once every call has given back what it held (within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(api)
        done = (m["sip_tts_calls_active"] == 0 and m["sip_tts_rtp_ports_in_use"] == 0
                and m["sip_tts_webhook_in_flight"] == 0 and m["sip_tts_status_callbacks_queued"] == 0
                and sockets(srv.proc.pid) <= fds)
        if done or time.monotonic() > deadline:
            return m
        time.sleep(0.1)


def test_webhook_steps_play_signed_and_reported(start_server, capture, tmp_path):
    """(a) the application's steps are what the caller hears; its request verifies; (e) status callbacks."""
    app = Application(SECRET, {"/steps": Answer(body=json.dumps({"steps": [{"say": HELLO}, "hangup"]}).encode())})
    app.start()
    try:
        srv, api = serve(start_server, app)
        cap = capture("udp and dst host 127.0.0.1 and dst port 18700")
        res = run_sipp(srv.uri_host, "uac_pcmu_wait_bye.xml", "4001", tmp_path, "-m", "1", "-recv_timeout", "20000",
                       media_port=18700)
        cap.stop()
        assert res.returncode == 0, res.stdout[-1500:]
        [incoming] = [r for r in app.received if r.path == "/steps"]
        assert incoming.signed
        assert incoming.body["event"] == "call.incoming" and incoming.body["to"] == "4001"
        assert incoming.body["from"] == "caller" and incoming.body["codec"] == "PCMU"
        answered, completed = app.wait_for("/status", 2)
        assert all(r.signed for r in app.received)
        assert answered["event"] == "call.answered" and answered["call_id"] == incoming.body["call_id"]
        assert completed["event"] == "call.completed" and completed["reason"] == "prompt-done"
        assert completed["answered"] is True
        payload = b"".join(RtpPacket.parse(p.payload).payload for p in read_udp(cap.path))
        received = decode_g711(payload, "PCMU").astype(float)
        corr, at = best_match(received, rendered(srv, HELLO))
        speech_s = len(rendered(srv, HELLO)) / 8000
        print(f"\nwebhook steps: corr {corr:.3f} at {at / 8000:.2f} s; call {completed['duration_s']:.2f} s "
              f"for {speech_s:.2f} s of speech")
        # the application's text, from the start of the call (measured 0.00 s; 2 s: a stalled, loaded host)
        assert corr > 0.9 and at / 8000 < 2.0
        assert speech_s < completed["duration_s"] < speech_s + 5  # as long as the speech (+ the tail, load)
        assert "webhook answered" in srv.log_text() and HELLO not in srv.log_text()  # the text is never logged
    finally:
        app.stop()


def test_webhook_failures_play_the_fallback_or_refuse_and_leak_nothing(start_server, tmp_path):
    """(c) a timeout and (d) garbage, a 5xx, invalid steps: the fallback plays; a 5xx or an
    unreachable application without a fallback: 480, never answered; a connect that is refused:
    the script goes on; a caller who gives up while the application thinks: 487 (and another call
    is served meanwhile). Each reason is logged; afterwards no call, port, task, socket, live
    session or request is left over."""
    invalid = json.dumps({"steps": [{"say": "x"}, {"teleport": "sip:1@x"}]}).encode()
    noagent = json.dumps({"steps": [{"connect": f"ws://127.0.0.1:{free_udp_port()}/gone"}, {"say": SORRY}]}).encode()
    app = Application(SECRET, {"/slow": Answer(body=b'{"steps": ["hangup"]}', delay_s=3), "/error": Answer(503),
                               "/garbage": Answer(body=b"<html>oops</html>"), "/invalid": Answer(body=invalid),
                               "/noagent": Answer(body=noagent),
                               "/think": Answer(body=b'{"steps": ["hangup"]}', delay_s=9)})
    app.start()
    try:
        srv, api = serve(start_server, app)
        time.sleep(0.5)
        baseline, fds = metrics(api), sockets(srv.proc.pid)
        # while one application thinks (9 s), another call is served: the webhook holds up no other call;
        # then that caller gives up: 487, never answered, the request abandoned
        sig = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sig.bind(("127.0.0.1", 0))
        sig.settimeout(5)
        sig.sendto(invite(branch="z9hG4bKgiveup", call_id="give-up", user="4009", sdp=offer(LOOPBACK, 18990),
                          host=LOOPBACK), ("127.0.0.1", srv.port))
        app.wait_for("/think", 1)
        assert metrics(api)["sip_tts_webhook_in_flight"] == 1
        res = run_sipp(srv.uri_host, "uac_pcmu_wait_bye.xml", "4003", tmp_path, "-m", "1", "-recv_timeout", "20000",
                       media_port=18800)
        assert res.returncode == 0, res.stdout[-1500:]
        assert metrics(api)["sip_tts_webhook_in_flight"] == 1  # (the first caller is still waiting)
        sig.sendto(request("CANCEL", branch="z9hG4bKgiveup", call_id="give-up", cseq=1), ("127.0.0.1", srv.port))
        final = wait_for(sig, "INVITE", 487)
        sig.sendto(request("ACK", branch="z9hG4bKgiveup", call_id="give-up", cseq=1, to_tag=to_tag(final)),
                   ("127.0.0.1", srv.port))
        sig.close()
        for number in ("4002", "4004", "4005", "4008"):
            res = run_sipp(srv.uri_host, "uac_pcmu_wait_bye.xml", number, tmp_path, "-m", "1",
                           "-recv_timeout", "20000", media_port=18800)
            assert res.returncode == 0, (number, res.stdout[-1500:])
        for number in ("4006", "4007"):
            res = run_sipp(srv.uri_host, EXPECT_480, number, tmp_path, "-m", "1", "-recv_timeout", "10000",
                           media_port=18800)
            assert res.returncode == 0, (number, res.stdout[-1500:])
        log = srv.log_text()
        for why in ("timeout after 0.5 s; playing the fallback", "invalid JSON (JSONDecodeError); playing the "
                    "fallback", "HTTP 503; playing the fallback", "invalid steps: steps.1.teleport: unknown field; "
                    "playing the fallback", "HTTP 503; no fallback, refusing with 480",
                    "unreachable (ConnectError); no fallback, refusing with 480",
                    "connect failed: ConnectionRefusedError"):
            assert why in log, why
        completed = [e for e in app.wait_for("/status", 5 + 8) if e["event"] == "call.completed"]
        assert sorted((e["to"], e["reason"], e["answered"]) for e in completed) == [
            ("4002", "prompt-done", True), ("4003", "prompt-done", True), ("4004", "prompt-done", True),
            ("4005", "prompt-done", True), ("4006", "refused", False), ("4007", "refused", False),
            ("4008", "prompt-done", True), ("4009", "cancel", False)]
        assert all("webhook_failure" in e for e in completed if e["to"] not in ("4008", "4009")) and "oops" not in log
        m = settled(srv, api, fds)
        print(f"\ntasks {baseline['sip_tts_asyncio_tasks']:.0f} before, after: "
              f"{({k: v for k, v in m.items() if 'webhook' in k or 'status' in k or 'tasks' in k})}")
        assert m["sip_tts_calls_active"] == 0 and m["sip_tts_rtp_ports_in_use"] == 0
        assert m["sip_tts_sip_calls_open"] == 0 and m["sip_tts_live_sessions"] == 0 and m["sip_tts_live_tasks"] == 0
        assert m["sip_tts_webhook_in_flight"] == 0 and m["sip_tts_status_callbacks_queued"] == 0
        assert m["sip_tts_asyncio_tasks"] == baseline["sip_tts_asyncio_tasks"]
        assert sockets(srv.proc.pid) <= fds
        for outcome, n in (("timeout", 1), ("invalid", 2), ("http_error", 2), ("unreachable", 1), ("answered", 1),
                           ("abandoned", 1)):
            assert m[f'sip_tts_webhook_requests_total{{outcome="{outcome}"}}'] == n, outcome
        assert m['sip_tts_calls_total{outcome="refused"}'] == 2
        assert m["sip_tts_webhook_seconds_count"] == 7  # every request but the abandoned one
        assert m['sip_tts_webhook_seconds_bucket{le="0.25"}'] <= 6  # the timed-out one took its 0.5 s
    finally:
        app.stop()


def test_webhook_connect_opens_the_agent_websocket_and_the_caller_hears_it(start_server, capture, tmp_path):
    """(b) the reply is a connect step: the server opens the WebSocket to the application (a
    `websockets` server here), which pushes text; the caller hears that text; the handshake is signed."""
    agent = Agent(HELLO).start()
    app = Application(SECRET, {"/steps": Answer(body=json.dumps({"steps": [{"connect": agent.url}]}).encode())})
    app.start()
    try:
        srv, api = serve(start_server, app)
        fds = sockets(srv.proc.pid)
        cap = capture("udp and dst host 127.0.0.1 and dst port 18900")
        res = run_sipp(srv.uri_host, "uac_pcmu_wait_bye.xml", "4001", tmp_path, "-m", "1", "-recv_timeout", "20000",
                       media_port=18900)
        cap.stop()
        assert res.returncode == 0, res.stdout[-1500:]
        [hs] = agent.handshakes
        [incoming] = app.events("/steps")
        assert hs["x-sip-tts-call-id"] == incoming["call_id"]
        assert hs["x-sip-tts-signature"] and signature_ok(SECRET, incoming["call_id"].encode(),
                                                          hs["x-sip-tts-signature"], time.time())
        kinds = [e["event"] for e in agent.events]
        assert kinds[0] == "start" and "speaking" in kinds and kinds[-1] == "idle"
        payload = b"".join(RtpPacket.parse(p.payload).payload for p in read_udp(cap.path))
        corr, at = best_match(decode_g711(payload, "PCMU").astype(float), rendered(srv, HELLO))
        print(f"\nconnect: corr {corr:.3f} at {at / 8000:.2f} s; "
              f"speaking latency {next(e for e in agent.events if e['event'] == 'speaking')['latency_ms']} ms")
        assert corr > 0.9
        m = settled(srv, api, fds)
        assert sockets(srv.proc.pid) <= fds and m["sip_tts_sip_calls_open"] == 0
        assert m["sip_tts_live_sessions"] == 0 and m["sip_tts_live_streams"] == 0 and m["sip_tts_live_tasks"] == 0
    finally:
        app.stop()
        agent.stop()
