"""The HTTP API with real clients: the openai SDK, httpx, curl, schemathesis; espeak engine."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import wave

import httpx
import numpy as np
import pytest

from engine.audio import decode_g711
from engine.espeak import EspeakEngine
from engine.base import VoiceSpec

from .api_support import api_server, correlation, decode, metric, ready_port, speech, start_api_server
from .children import engine_child
from .conftest import ROOT, free_udp_port

pytestmark = pytest.mark.timeout(120)
PROMPTS = """
voices:
  bright: {voice: en-gb, rate: 190}
routes:
  "1000": "Hello."
default: "Not in service."
"""
TEXT = "The quick brown fox jumps over the lazy dog. Calls come first."
FORMATS = ("mp3", "opus", "flac", "wav", "pcm")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    s = start_api_server(tmp_path_factory.mktemp("api"), api_yaml="  max_body_bytes: 262144\n", prompts=PROMPTS)
    yield s
    s.srv.stop()


@pytest.fixture(scope="module")
def engine_seconds() -> float:
    """How long the engine's own audio for TEXT is (default voice), rendered here without the server."""

    async def run() -> int:
        eng = EspeakEngine()
        await eng.start()
        n = sum([len(c) async for c in eng.stream(TEXT, VoiceSpec("default", (("voice", "en-us"), ("rate", 165))))])
        await eng.close()
        return n

    return asyncio.run(run()) / 22050


def client(api):
    from openai import OpenAI

    return OpenAI(base_url=api.url + "/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.mark.parametrize("fmt", FORMATS)
def test_openai_sdk_each_format_plain_and_streamed(api, engine_seconds, fmt):
    c = client(api)
    whole = c.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format=fmt)
    x, rate = decode(whole.content, fmt)
    assert rate == 24000
    # the engine's audio, resampled to 24 kHz (mp3/opus add at most an encoder frame or two)
    assert abs(len(x) / rate - engine_seconds) < 0.08, (len(x) / rate, engine_seconds)
    assert np.sqrt(np.mean(x ** 2)) > 0.01  # speech, not silence
    pieces = []
    with c.audio.speech.with_streaming_response.create(model="espeak", voice="default", input=TEXT,
                                                       response_format=fmt) as resp:
        assert resp.http_response.headers["content-type"].startswith(
            {"mp3": "audio/mpeg", "opus": "audio/ogg", "flac": "audio/flac", "wav": "audio/wav",
             "pcm": "audio/pcm"}[fmt])
        for chunk in resp.iter_bytes(chunk_size=None):
            pieces.append(chunk)
    y, rate = decode(b"".join(pieces), fmt)
    assert rate == 24000 and abs(len(y) / rate - engine_seconds) < 0.08


def test_openai_sse_events(api, engine_seconds):
    c = client(api)
    audio, done = b"", None
    with c.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=TEXT,
                                                       response_format="pcm", stream_format="sse") as resp:
        assert resp.http_response.headers["content-type"].startswith("text/event-stream")
        events = 0
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                assert line == ""
                continue
            event = json.loads(line[6:])
            events += 1
            if event["type"] == "speech.audio.delta":
                assert done is None
                audio += base64.b64decode(event["audio"])
            else:
                assert event["type"] == "speech.audio.done"
                done = event
    assert done is not None and done["usage"]["input_tokens"] == len(TEXT)
    assert done["usage"]["total_tokens"] == done["usage"]["input_tokens"] + done["usage"]["output_tokens"]
    assert events > 3  # audio arrived in several deltas as it was synthesized
    x, rate = decode(audio, "pcm")
    assert abs(len(x) / rate - engine_seconds) < 0.08


def _envelope(x: np.ndarray) -> np.ndarray:
    """Energy per 20 ms: the shape of the speech, whatever the waveform's fine detail."""
    n = len(x) // 160
    return np.sqrt(np.mean(x[: n * 160].astype(np.float64).reshape(n, 160) ** 2, axis=1))


def test_telephony_mulaw_equals_what_a_call_hears(tmp_path):
    """espeak-ng carries waveform state (its pitch flutter) from one utterance to the next, so the same text is
    sample-identical only as a process's first utterance: that is how `sip-tts say` renders it, and how this
    server (no prompts rendered at start-up) renders its first request."""
    s = start_api_server(tmp_path, prompts='default: "Hi."\ncache:\n  warm: false\n')
    try:
        out = tmp_path / "say.wav"
        res = subprocess.run([sys.executable, "-m", "sip_tts.cli", "say", TEXT, "--out", str(out), "--config",
                              str(s.srv.workdir / "server.yaml")], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0, res.stderr
        with wave.open(str(out)) as w:
            said = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32)
        r = httpx.post(s.url + "/v1/synthesize/telephony", json={"text": TEXT}, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"] == "audio/basic"
        got = decode_g711(r.content, "PCMU").astype(np.float32)
        assert correlation(got, said) >= 0.99 and abs(len(got) - len(said)) <= 160
        # later utterances: the same speech (length, energy over time), streamed or not, from curl too
        later = [httpx.post(s.url + "/v1/synthesize", json={"text": TEXT, "format": "mulaw", "stream": True},
                            timeout=30).content]
        curl = subprocess.run(["curl", "-sf", s.url + "/v1/synthesize", "-H", "Content-Type: application/json",
                               "-d", json.dumps({"text": TEXT, "format": "mulaw", "sample_rate": 8000})],
                              capture_output=True, timeout=30)
        assert curl.returncode == 0
        later.append(curl.stdout)
        for data in later:
            x = decode_g711(data, "PCMU").astype(np.float32)
            assert abs(len(x) - len(said)) < 0.01 * len(said)
            assert correlation(_envelope(x), _envelope(said)) >= 0.95
        # A-law: as a PCMA call hears it
        a = httpx.post(s.url + "/v1/synthesize", json={"text": TEXT, "format": "alaw"}, timeout=30)
        assert a.headers["content-type"] == "audio/x-alaw-basic"
        assert correlation(_envelope(decode_g711(a.content, "PCMA")), _envelope(said)) >= 0.95
    finally:
        s.srv.stop()


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_synthesize_wav_at_each_rate(api, engine_seconds, rate):
    for stream in (False, True):
        r = httpx.post(api.url + "/v1/synthesize", json={"text": TEXT, "format": "wav", "sample_rate": rate,
                                                         "stream": stream}, timeout=30)
        assert r.status_code == 200 and r.headers["x-sample-rate"] == str(rate)
        x, sr = decode(r.content, "wav")
        assert sr == rate and abs(len(x) / sr - engine_seconds) < 0.05
    p = httpx.post(api.url + "/v1/synthesize", json={"text": TEXT, "format": "pcm", "sample_rate": rate}, timeout=30)
    assert abs(len(p.content) / 2 / rate - engine_seconds) < 0.05


BAD = [
    ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "x" * 4097}, 400, "input"),
    ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": ""}, 400, "input"),
    ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "   \n"}, 400, "input"),
    ("/v1/audio/speech", {"model": "tts-1", "voice": "nobody", "input": "hi"}, 404, "voice"),
    ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "hi", "response_format": "ogg"}, 400,
     "response_format"),
    ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "hi", "response_format": "aac"}, 400,
     "response_format"),
    ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "hi", "speed": 9}, 400, "speed"),
    ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "hi", "stream_format": "ws"}, 400,
     "stream_format"),
    ("/v1/audio/speech", {"model": "whisper-9", "voice": "alloy", "input": "hi"}, 404, "model"),
    ("/v1/audio/speech", {"voice": "alloy", "input": "hi"}, 400, "model"),
    ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "hi", "colour": "red"}, 400, "colour"),
    ("/v1/synthesize", {"text": "hi", "format": "mulaw", "sample_rate": 16000}, 400, "sample_rate"),
    ("/v1/synthesize", {"text": "hi", "sample_rate": 44100}, 400, "sample_rate"),
    ("/v1/synthesize", {"text": "hi", "voice": "nobody"}, 404, "voice"),
    ("/v1/synthesize/telephony", {"text": ""}, 400, "text"),
    ("/v1/synthesize/telephony", {"text": "y" * 5000}, 400, "text"),
]


@pytest.mark.parametrize("path,body,status,param", BAD, ids=[f"{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_a_4xx_naming_the_field(api, path, body, status, param):
    r = httpx.post(api.url + path, json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and param in err["message"]
    if body.get("response_format") == "aac":
        assert "mp3, opus, flac, wav, pcm" in err["message"]  # the formats offered


def test_malformed_and_oversized_bodies(api):
    r = httpx.post(api.url + "/v1/audio/speech", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    big = {"model": "tts-1", "voice": "alloy", "input": "hi", "instructions": "z" * 300_000}
    r = httpx.post(api.url + "/v1/audio/speech", json=big)
    assert r.status_code == 413 and r.json()["error"]["param"] == "body"

    def chunks():
        for _ in range(40):
            yield b" " * 8192  # a chunked body (no Content-Length) growing past the cap

    r = httpx.post(api.url + "/v1/audio/speech", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_voices_and_models(api, tmp_path):
    names = {v["name"]: v["source"] for v in httpx.get(api.url + "/v1/voices").json()["voices"]}
    assert names["default"] == "builtin" and names["bright"] == "config" and names["alloy"] == "alias"
    assert {m["id"] for m in httpx.get(api.url + "/v1/models").json()["data"]} >= {"espeak", "tts-1"}
    # a configured voice is heard: en-gb at 190 wpm is shorter than the default at 165
    d = httpx.post(api.url + "/v1/synthesize", json={"text": TEXT, "format": "pcm"}).content
    b = httpx.post(api.url + "/v1/synthesize", json={"text": TEXT, "format": "pcm", "voice": "bright"}).content
    assert len(b) < 0.95 * len(d)
    # espeak cannot clone a voice from audio: the upload is refused naming the file field
    wav = tmp_path / "ref.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((np.sin(np.arange(16000 * 6) * 0.05) * 8000).astype("<i2").tobytes())
    r = httpx.post(api.url + "/v1/voices", data={"name": "mine"}, files={"file": wav.open("rb")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    assert httpx.delete(api.url + "/v1/voices/nobody").status_code == 404
    r = httpx.delete(api.url + "/v1/voices/bright")
    assert r.status_code == 400 and r.json()["error"]["param"] == "name"


def test_speed_is_espeak_rate(api):
    slow = httpx.post(api.url + "/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": TEXT,
                                                           "response_format": "pcm", "speed": 0.7}).content
    fast = httpx.post(api.url + "/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": TEXT,
                                                           "response_format": "pcm", "speed": 1.5}).content
    assert len(slow) > 1.6 * len(fast)


def test_429_over_max_concurrent_and_a_disconnect_frees_the_engine(tmp_path):
    s = start_api_server(tmp_path, api_yaml="  max_concurrent: 1\n")
    try:
        long_text = ("This sentence is here to keep the engine busy for a long while. " * 70)[:4096]
        audio_before = metric(s.url, "sip_tts_engine_audio_seconds_total")
        with httpx.Client(timeout=30) as c1:
            with c1.stream("POST", s.url + "/v1/audio/speech", json={"model": "tts-1", "voice": "alloy",
                                                                     "input": long_text, "response_format": "pcm",
                                                                     "speed": 0.25}) as r:
                assert r.status_code == 200
                chunks = r.iter_raw()
                next(chunks)  # audio is flowing (the iterator kept: dropping it would close the connection)
                busy = httpx.post(s.url + "/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "hi"})
                assert busy.status_code == 429 and int(busy.headers["retry-after"]) >= 1
                assert busy.json()["error"]["code"] == "too_many_requests"
            # leaving the block closes the connection mid-stream: the synthesis stops
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and metric(s.url, "sip_tts_api_active_requests") != 0:
            time.sleep(0.05)
        assert metric(s.url, "sip_tts_api_active_requests") == 0
        assert metric(s.url, "sip_tts_api_cancelled_total") == 1
        # the engine's worker is free again at once: a new request's wait for an engine slot is short
        r = httpx.post(s.url + "/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Hello again.",
                                                          "response_format": "wav"}, timeout=30)
        assert r.status_code == 200 and float(r.headers["x-queue-ms"]) < 500
        # espeak stopped early: the long text at speed 0.25 is ~470 s of speech, far less of it was made
        made = metric(s.url, "sip_tts_engine_audio_seconds_total") - audio_before
        assert made < 250, made
    finally:
        s.srv.stop()


def test_engine_down_is_503(tmp_path):
    body = speech("Hello.")
    with api_server(tmp_path, extra_yaml="engine:\n  kind: espeak\n  process: true\n") as s:
        r = httpx.post(s.url + "/v1/audio/speech", json=body, timeout=30)
        assert r.status_code == 200
        # the engine in its own process: when its first audio reached the server, before the loop handed it on
        assert 0 < float(r.headers["x-first-audio-arrived-ms"]) <= float(r.headers["x-first-audio-ms"])
        os.kill(engine_child(s.srv.proc.pid), signal.SIGKILL)
        statuses = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = httpx.post(s.url + "/v1/audio/speech", json=body, timeout=30)
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert "retry-after" in r.headers and r.json()["error"]["type"] == "service_unavailable"
            if 503 in statuses and r.status_code == 200:
                break
            time.sleep(0.05)
        assert 503 in statuses and statuses[-1] == 200, statuses  # refused while down, served once it is back


def test_api_keys(tmp_path):
    s = start_api_server(tmp_path, api_yaml="  keys: [sekrit-1, sekrit-2]\n")
    try:
        body = speech("Hi.")
        r = httpx.post(s.url + "/v1/audio/speech", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["param"] == "Authorization"
        assert httpx.post(s.url + "/v1/audio/speech", json=body,
                          headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(s.url + "/v1/voices").status_code == 401
        from openai import OpenAI

        sdk = OpenAI(base_url=s.url + "/v1", api_key="sekrit-2", max_retries=0)
        assert len(sdk.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", response_format="wav").content) > 1000
        assert httpx.get(s.url + "/health").status_code == 200  # health, metrics and the page need no key
        assert httpx.get(s.url + "/metrics").status_code == 200
        assert "sip_tts_api_requests_total" in httpx.get(s.url + "/v1/metrics").text
    finally:
        s.srv.stop()


def test_non_loopback_listen_without_keys_refuses_to_start(tmp_path):
    (tmp_path / "prompts.yaml").write_text('default: "Hi."\n')
    (tmp_path / "server.yaml").write_text("sip:\n  listen: 127.0.0.1:5999\napi:\n  listen: 0.0.0.0:8080\n")
    res = subprocess.run([sys.executable, "-m", "sip_tts.cli", "serve", "--config", str(tmp_path / "server.yaml")],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "server.yaml:3: api" in res.stderr and "needs api.keys" in res.stderr, res.stderr


def test_api_alone_without_sip(tmp_path):
    (tmp_path / "prompts.yaml").write_text('default: "Hi."\n')
    port, sip_port = free_udp_port(), free_udp_port()
    (tmp_path / "server.yaml").write_text(f"sip:\n  enabled: false\n  listen: 127.0.0.1:{sip_port}\n"
                                          f"api:\n  listen: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([sys.executable, "-m", "sip_tts.cli", "serve", "--config", str(tmp_path / "server.yaml")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "http api only" in line and ready_port(line) == port, line
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/health").text == "ready\n"
        r = httpx.post(url + "/v1/synthesize/telephony", json={"text": "Hello."})
        assert r.status_code == 200 and len(r.content) > 2000
        # nothing listens for SIP
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            assert t.connect_ex(("127.0.0.1", sip_port)) != 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_schemathesis_finds_no_5xx_and_nothing_outside_the_schema(api, tmp_path):
    schema = httpx.get(api.url + "/openapi.json").json()
    assert {"/v1/audio/speech", "/v1/synthesize", "/v1/synthesize/telephony", "/v1/models", "/v1/voices",
            "/health", "/metrics"} <= set(schema["paths"])
    st = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    res = subprocess.run(
        [st, "run", api.url + "/openapi.json", "--checks",
         "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
         "response_headers_conformance", "--max-examples", "10", "--phases", "examples,coverage,fuzzing",
         "--seed", "16", "--request-timeout", "20", "--max-time", "20", "--no-shrink",
         "--generation-database", "none"],
        capture_output=True, text=True, timeout=90, cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"})
    assert res.returncode == 0, res.stdout[-4000:]
    assert "passed" in res.stdout.lower() or "no issues" in res.stdout.lower(), res.stdout[-2000:]


def test_own_thread_mode_streams_the_whole_utterance(tmp_path, engine_seconds):
    """``api.own_thread``: HTTP on its own loop, the utterance on the engine's, every chunk handed across."""
    with api_server(tmp_path, api_yaml="  own_thread: true\n") as s:
        with httpx.stream("POST", s.url + "/v1/audio/speech", json=speech(TEXT, "pcm"), timeout=30) as r:
            assert r.status_code == 200
            body = b"".join(r.iter_bytes())
        assert abs(len(body) / 2 / 24000 - engine_seconds) < 0.05
        r = httpx.post(s.url + "/v1/synthesize/telephony", json={"text": TEXT}, timeout=30)
        assert r.status_code == 200 and abs(len(r.content) / 8000 - engine_seconds) < 0.05
        assert httpx.post(s.url + "/v1/audio/speech", json=speech("hi", voice="nobody")).status_code == 404
