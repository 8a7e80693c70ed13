"""The synthesis POSTs' short way (sip_tts/api/front.py), driven as ASGI without sockets: a request it
takes is answered exactly as the FastAPI app answers it, and one it does not take reaches the app whole."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from config.schema import ApiSettings
from engine.base import VoiceSpec
from sip_tts.api.app import create_app
from sip_tts.api.context import ApiContext, ApiMetrics, Voices
from sip_tts.api.front import SynthesisFront
from sip_tts.api.priority import CallsFirst

pytestmark = pytest.mark.timeout(60)


class _Tone:
    """A stand-in engine: two chunks of a tone per utterance (what each path sends is compared, not the engine)."""

    name = "stand-in"
    sample_rate = 24000

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def stream(self, text: str, voice: VoiceSpec, background: bool = False):
        self.texts.append(text)
        tone = (0.2 * np.sin(np.arange(4800) * 0.06)).astype(np.float32)
        for _ in range(2):
            await asyncio.sleep(0)
            yield tone


class _Counted:
    """The FastAPI app, counting the requests that reach it and the bodies it reads."""

    def __init__(self, app) -> None:
        self.app = app
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        body = bytearray()

        async def reading():
            message = await receive()
            body.extend(message.get("body", b""))
            return message

        try:
            await self.app(scope, reading, send)
        finally:
            self.bodies.append(bytes(body))


def _apps(keys: list[str] | None = None, cap: int = 65536) -> tuple[SynthesisFront, _Counted, _Tone, ApiContext]:
    engine = _Tone()
    ctx = ApiContext(ApiSettings(keys=keys or [], max_body_bytes=cap), CallsFirst(engine, 4),
                     Voices(VoiceSpec(), {}, Path("/nonexistent"), engine.name), lambda: (200, "ready"), lambda: b"",
                     ApiMetrics(CollectorRegistry()), speed_native=False)
    inner = _Counted(create_app(ctx))
    return SynthesisFront(inner, ctx), inner, engine, ctx


async def _call(app, path: str, messages: list[dict], headers: dict[str, str] | list[tuple[str, str]] | None = None
                ) -> tuple[int, dict, bytes]:
    """One POST through ``app``: its body as ``messages``; the status, headers and body sent back (``headers``
    as a list: sent as they are, repeated names included)."""
    hdrs = headers if isinstance(headers, list) else {"content-type": "application/json", **(headers or {})}
    pairs = hdrs if isinstance(hdrs, list) else list(hdrs.items())
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "path": path,
             "raw_path": path.encode(), "root_path": "", "scheme": "http", "query_string": b"",
             "headers": [(k.encode(), v.encode()) for k, v in pairs], "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8080), "state": {}}
    pending = list(messages)
    sent: list[dict] = []
    done = asyncio.Event()

    async def receive() -> dict:
        if pending:
            return pending.pop(0)
        await done.wait()  # the client stays until the response is complete
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await asyncio.wait_for(app(scope, receive, send), 10)
    start = sent[0]
    headers_out = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers_out, b"".join(m.get("body", b"") for m in sent[1:])


def _body(obj: dict) -> list[dict]:
    return [{"type": "http.request", "body": json.dumps(obj).encode(), "more_body": False}]


GOOD = [("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "Hello.", "response_format": "pcm"}),
        ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "Hello.", "response_format": "wav",
                              "stream_format": "sse"}),
        ("/v1/synthesize", {"text": "Hello.", "format": "mulaw", "stream": True}),
        ("/v1/synthesize", {"text": "Hello.", "format": "wav", "sample_rate": 16000}),
        ("/v1/synthesize/telephony", {"text": "Hello."})]
# valid for the schema, refused by the handler: the front answers these itself, as the app's handler does
REFUSED = [("/v1/audio/speech", {"model": "whisper-9", "voice": "alloy", "input": "hi"}, 404),
           ("/v1/audio/speech", {"model": "tts-1", "voice": "nobody", "input": "hi"}, 404),
           ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "hi", "response_format": "aac"}, 400),
           ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "hi", "speed": 2.0}, 400),
           ("/v1/synthesize", {"text": "hi", "format": "alaw", "sample_rate": 16000}, 400)]


@pytest.mark.parametrize("path,obj", GOOD, ids=[f"{p}-{i}" for i, (p, _) in enumerate(GOOD)])
def test_a_well_formed_request_skips_the_app_and_gets_what_the_app_sends(path, obj):
    async def run() -> None:
        front, inner, engine, ctx = _apps()
        short = await _call(front, path, _body(obj))
        assert inner.bodies == [] and engine.texts == [obj.get("input") or obj["text"]]  # the app never saw it
        full = await _call(inner, path, _body(obj))
        assert short[0] == full[0] == 200
        assert short[2] == full[2] and len(short[2]) > 1000
        drop = ("x-first-audio-ms", "x-queue-ms")  # this request's own times
        same = {k: v for k, v in full[1].items() if k not in drop}
        assert {k: v for k, v in short[1].items() if k not in drop} == same
        assert ctx.active == 0 and ctx.engine.api_active == 0  # both requests gave their slots back

    asyncio.run(run())


@pytest.mark.parametrize("path,obj,status", REFUSED, ids=[f"{p}-{s}-{i}" for i, (p, _, s) in enumerate(REFUSED)])
def test_a_refused_request_gets_the_same_error_either_way(path, obj, status):
    async def run() -> None:
        front, inner, engine, _ = _apps()
        short = await _call(front, path, _body(obj))
        assert inner.bodies == [] and engine.texts == []
        assert short == await _call(inner, path, _body(obj)) and short[0] == status
        assert json.loads(short[2])["error"]["param"]

    asyncio.run(run())


SPEECH = {"model": "tts-1", "voice": "alloy", "input": "Hello.", "response_format": "pcm"}
PASSED_ON = [  # (messages, headers, status): the front does not take these; the app answers, its body replayed
    (_body({**SPEECH, "colour": "red"}), {}, 400),  # fails the model's validation
    ([{"type": "http.request", "body": b"{not json", "more_body": False}], {}, 400),
    ([{"type": "http.request", "body": b"[" * 60000, "more_body": False}], {}, 400),  # nested past json's recursion
    (_body(SPEECH), {"content-type": "text/plain"}, 400),
    ([{"type": "http.request", "body": b" " * 70000, "more_body": False}], {}, 413),  # over the cap, no length
    ([{"type": "http.request", "body": b" " * 40000, "more_body": True},
      {"type": "http.request", "body": b" " * 40000, "more_body": False}], {}, 413),
    ([{"type": "http.request", "body": b" " * 8192, "more_body": True}] * 40
     + [{"type": "http.request", "body": b"", "more_body": False}], {}, 413),  # chunked, growing past the cap
]


@pytest.mark.parametrize("messages,headers,status", PASSED_ON,
                         ids=[f"{s}-{i}" for i, (_, _, s) in enumerate(PASSED_ON)])
def test_what_the_front_does_not_take_reaches_the_app_whole(messages, headers, status):
    async def run() -> None:
        front, inner, engine, _ = _apps()
        got = await _call(front, "/v1/audio/speech", messages, headers)
        assert got[0] == status and json.loads(got[2])["error"]["message"]
        sent = b"".join(m["body"] for m in messages)
        assert len(inner.bodies) == 1 and sent.startswith(inner.bodies[0]) and inner.bodies[0]
        assert len(inner.bodies[0]) <= 65536 + 40000  # the front stops reading at the cap (held: one piece more)
        assert engine.texts == []

    asyncio.run(run())


def test_keys_a_valid_key_takes_the_short_way_others_get_the_apps_401():
    async def run() -> None:
        front, inner, engine, _ = _apps(keys=["k-1", "k-2"])
        status, _, _ = await _call(front, "/v1/audio/speech", _body(SPEECH), {"authorization": "Bearer k-2"})
        assert status == 200 and inner.bodies == [] and engine.texts == ["Hello."]
        for auth in ({}, {"authorization": "Bearer nope"}, {"authorization": "Basic k-2"}):
            status, headers, body = await _call(front, "/v1/audio/speech", _body(SPEECH), auth)
            assert status == 401 and headers["www-authenticate"] == "Bearer"
            assert json.loads(body)["error"]["param"] == "Authorization"
        assert len(inner.bodies) == 3 and engine.texts == ["Hello."]

    asyncio.run(run())


def test_a_body_in_pieces_is_joined_and_a_client_gone_before_its_end_is_seen_by_the_app():
    async def run() -> None:
        front, inner, engine, _ = _apps()
        raw = json.dumps(SPEECH).encode()
        pieces = [{"type": "http.request", "body": raw[:10], "more_body": True},
                  {"type": "http.request", "body": raw[10:], "more_body": False}]
        status, _, body = await _call(front, "/v1/audio/speech", pieces)
        assert status == 200 and len(body) > 1000 and inner.bodies == []
        seen: list[dict] = []

        async def app(scope, receive, send) -> None:  # what the app is handed after the front gave up
            seen.append(await receive())
            seen.append(await receive())

        front.app = app
        gone = [{"type": "http.request", "body": raw[:10], "more_body": True}, {"type": "http.disconnect"}]
        scope = {"type": "http", "method": "POST", "path": "/v1/audio/speech",
                 "headers": [(b"content-type", b"application/json")]}
        it = iter(gone)

        async def receive() -> dict:
            return next(it)

        async def send(message: dict) -> None:
            raise AssertionError("nothing is sent to a client that went away")

        await front(scope, receive, send)
        assert seen == [{"type": "http.request", "body": raw[:10], "more_body": True}, {"type": "http.disconnect"}]
        assert engine.texts == ["Hello."]

    asyncio.run(run())


def test_a_repeated_header_is_read_as_the_app_reads_it_the_first_one():
    """Two Authorization (or Content-Type) headers: the first decides, on the short way as in the app."""
    async def run() -> None:
        front, inner, engine, _ = _apps(keys=["k-1"])
        json_type = ("content-type", "application/json")
        for pairs, status in (([json_type, ("authorization", "Bearer nope"), ("authorization", "Bearer k-1")], 401),
                              ([json_type, ("authorization", "Bearer k-1"), ("authorization", "Bearer nope")], 200),
                              ([("content-type", "text/plain"), json_type, ("authorization", "Bearer k-1")], 400)):
            short = await _call(front, "/v1/audio/speech", _body(SPEECH), pairs)
            assert short[0] == status, (pairs, short[0])
            assert (await _call(inner, "/v1/audio/speech", _body(SPEECH), pairs))[0] == status
        assert engine.texts == ["Hello.", "Hello."]  # the 200s: one short, one through the app

    asyncio.run(run())
