"""Synthesis endpoints: OpenAI's ``/v1/audio/speech``, and ``/v1/synthesize`` (+ ``/telephony``) of the design."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import AsyncIterator, Literal

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.base import EngineError, VoiceSpec
from engine.process import S16LE

from .audio import CONTENT_TYPES, OPENAI_FORMATS, Encoder
from .context import ApiContext
from .errors import ApiError, responses

log = logging.getLogger("sip_tts.api")
MAX_INPUT = 4096  # characters, as OpenAI's limit
_S16 = ("pcm", "wav")  # at the engine's own rate these are its 16-bit samples: made in the engine's process (S16LE)
OPENAI_RATE = 24000  # every OpenAI format is 24 kHz (pcm: 24 kHz 16-bit little-endian mono)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("is blank")
    return v


class SpeechRequest(_Body):
    model: str = Field(min_length=1, max_length=200, description="GET /v1/models; OpenAI's names are accepted")
    input: str = Field(min_length=1, max_length=MAX_INPUT, description="text to speak")
    voice: str = Field(min_length=1, max_length=64, description="GET /v1/voices; OpenAI's names mean default")
    instructions: str | None = Field(None, max_length=MAX_INPUT, description="accepted and ignored")
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = Field(
        "mp3", description="aac is refused (no encoder); pcm: 24 kHz 16-bit little-endian mono")
    speed: float = Field(1.0, ge=0.25, le=4.0, description="engines with a native rate only (espeak)")
    stream_format: Literal["audio", "sse"] = Field("audio", description="audio: the bytes as they are synthesized; "
                                                   "sse: speech.audio.delta / speech.audio.done events")

    _blank = field_validator("input")(classmethod(lambda cls, v: _not_blank(v)))


class SynthesizeRequest(_Body):
    text: str = Field(min_length=1, max_length=MAX_INPUT)
    voice: str = Field("default", min_length=1, max_length=64)
    format: Literal["wav", "pcm", "mulaw", "alaw", "flac", "mp3", "opus"] = "wav"
    sample_rate: Literal[8000, 16000, 24000] | None = Field(
        None, description="default 24000; mulaw and alaw: 8000 only (the telephone rate)")
    stream: bool = Field(False, description="true: chunked, bytes as they are synthesized")

    _blank = field_validator("text")(classmethod(lambda cls, v: _not_blank(v)))


class TelephonyRequest(_Body):
    text: str = Field(min_length=1, max_length=MAX_INPUT)
    voice: str = Field("default", min_length=1, max_length=64)
    stream: bool = False

    _blank = field_validator("text")(classmethod(lambda cls, v: _not_blank(v)))


def _audio(types: list[str], extra: dict | None = None) -> dict:
    ok = {"description": "audio", "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in types}}
    return {200: ok, **responses(400, 401, 404, 413, 429, 503), **(extra or {})}


class _Guarded(Response):
    """A streamed response that gives its request slot back however it ends (also never started).

    Not Starlette's StreamingResponse: that starts a task group (two tasks) per response and sends from a
    new task, so a request's first byte waits a loop turn behind every other ready callback; with N
    streams whose first audio comes in one GPU batch, the Nth waited for all of them. Here the first audio
    goes out from the handler's own task, then one plain task listens for the client going away (which
    cancels the stream, and with it the engine's synthesis)."""

    def __init__(self, ctx: ApiContext, body: AsyncIterator[bytes], media_type: str, headers: dict[str, str]) -> None:
        self.body_iterator = body
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)
        self._ctx = ctx

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[override]
        task = asyncio.current_task()
        gone = False

        async def listen() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            task.cancel()  # type: ignore[union-attr]

        listener: asyncio.Task | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if listener is None:
                    listener = asyncio.ensure_future(listen())
            if listener is not None:
                listener.cancel()  # (from here on a cancel would come from elsewhere)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()  # type: ignore[union-attr]  # the client left: the response just ends
        finally:
            if listener is not None:
                listener.cancel()
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            self._ctx.done()


async def _start(ctx: ApiContext, text: str, voice: VoiceSpec, codec: str | None, endpoint: str
                 ) -> tuple[AsyncIterator, object, dict]:
    """The utterance's iterator with its first chunk already there (errors before any audio become 4xx/5xx)."""
    timing: dict = {}
    chunks = ctx.run_stream(text, voice, codec, timing)
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        first = None
    except EngineError as exc:
        await chunks.aclose()  # type: ignore[attr-defined]
        ctx.metrics.requests.labels(endpoint, "503").inc()
        raise ApiError(503, f"engine: {exc}", None, "engine_error", {"Retry-After": "2"}) from None
    except ValueError as exc:  # e.g. text too long for this engine's cache
        await chunks.aclose()  # type: ignore[attr-defined]
        raise ApiError(400, str(exc), "input", "invalid_value") from None
    if "first" in timing:
        ctx.metrics.first_audio.observe(timing["first"])
    return chunks, first, timing


async def _encoded(ctx: ApiContext, chunks: AsyncIterator, first: object, enc: Encoder | None
                   ) -> AsyncIterator[bytes]:
    """Bytes for the client as each chunk arrives; a client gone away stops the engine (``aclose``)."""
    done = False
    try:
        items = [] if first is None else [first]
        while True:
            for item in items:
                data = item if enc is None else enc.encode(item)
                if data:
                    yield data
            try:
                items = [await chunks.__anext__()]
            except StopAsyncIteration:
                break
        if enc is not None and (tail := enc.finish()):
            yield tail
        done = True
    except EngineError as exc:
        log.warning("api: synthesis failed mid-stream: %s", exc)  # the status is sent: the stream ends short
    finally:
        if not done:
            ctx.metrics.cancelled.inc()
        await chunks.aclose()  # type: ignore[attr-defined]


def _voice(ctx: ApiContext, name: str, speed: float) -> VoiceSpec:
    spec = ctx.voices.get(name)
    if speed == 1.0:
        return spec
    if not ctx.speed_native:
        raise ApiError(400, f"speed: engine {ctx.engine.name} has no native speed control; only 1.0 is accepted",
                       "speed", "unsupported_value")
    settings = dict(spec.settings)
    rate = int(settings.get("rate", 175)) * speed  # espeak: words per minute
    settings["rate"] = int(min(450, max(80, rate)))
    return VoiceSpec(spec.name, tuple(settings.items()))


def build(ctx: ApiContext, auth) -> APIRouter:
    router = APIRouter(dependencies=[auth])

    @router.post("/v1/audio/speech", responses=_audio(
        [CONTENT_TYPES[f] for f in OPENAI_FORMATS] + ["text/event-stream"]), response_class=Response,
        summary="OpenAI-compatible speech")
    async def speech(body: SpeechRequest) -> Response:
        return await speech_response(ctx, body)

    @router.post("/v1/synthesize", responses=_audio(sorted(set(CONTENT_TYPES.values()))), response_class=Response,
                 summary="Synthesize text (any format and rate)")
    async def synthesize(body: SynthesizeRequest) -> Response:
        return await synthesize_response(ctx, body)

    @router.post("/v1/synthesize/telephony", responses=_audio(["audio/basic"]), response_class=Response,
                 summary="8 kHz mu-law, the bytes a call gets")
    async def telephony(body: TelephonyRequest) -> Response:
        return await telephony_response(ctx, body)

    return router


async def speech_response(ctx: ApiContext, body: SpeechRequest) -> Response:
    """``POST /v1/audio/speech``: its checks, the hand-over to the engine, the response (its first audio there)."""
    if body.model not in ctx.model_ids:
        raise ApiError(404, f"model {body.model!r} not found (GET /v1/models lists them)", "model",
                       "model_not_found")
    if body.response_format not in OPENAI_FORMATS:
        raise ApiError(400, f"response_format: {body.response_format} is not offered; use one of "
                            f"{', '.join(OPENAI_FORMATS)}", "response_format", "unsupported_value")
    voice = _voice(ctx, body.voice, body.speed)
    ctx.admit()
    try:
        codec = S16LE if body.response_format in _S16 and ctx.engine.sample_rate == OPENAI_RATE else None
        chunks, first, timing = await _start(ctx, body.input, voice, codec, "speech")
    except BaseException:
        ctx.done()
        raise
    ctx.metrics.requests.labels("speech", "200").inc()
    # FLAC goes out whole: a FLAC stream without its length in the header is refused by libsndfile's readers
    enc = Encoder(body.response_format, ctx.engine.sample_rate, OPENAI_RATE,
                  streamed=body.response_format != "flac")
    audio = _encoded(ctx, chunks, first, enc)
    headers = _timing_headers(timing)
    if body.stream_format == "sse":
        return _Guarded(ctx, _sse(audio, len(body.input)), media_type="text/event-stream",
                        headers={**headers, "Cache-Control": "no-cache"})
    return _Guarded(ctx, audio, media_type=enc.content_type, headers=headers)


async def synthesize_response(ctx: ApiContext, body: SynthesizeRequest) -> Response:
    rate = body.sample_rate or (8000 if body.format in ("mulaw", "alaw") else 24000)
    if body.format in ("mulaw", "alaw") and rate != 8000:
        raise ApiError(400, f"sample_rate: {body.format} is 8000 Hz only", "sample_rate", "unsupported_value")
    return await _synth(ctx, body.text, body.voice, body.format, rate, body.stream, "synthesize")


async def telephony_response(ctx: ApiContext, body: TelephonyRequest) -> Response:
    return await _synth(ctx, body.text, body.voice, "mulaw", 8000, body.stream, "telephony")


def _timing_headers(timing: dict) -> dict[str, str]:
    """The engine's first audio (from the request's hand-over, its wait for a slot included) and that wait; with an
    engine in its own process also when that audio reached the server (before its loop handed it on)."""
    out = {"X-First-Audio-Ms": f"{timing.get('first', 0.0) * 1000:.2f}",
           "X-Queue-Ms": f"{timing.get('queued', 0.0) * 1000:.2f}"}
    if "arrived" in timing:
        out["X-First-Audio-Arrived-Ms"] = f"{timing['arrived'] * 1000:.2f}"
    return out


async def _synth(ctx: ApiContext, text: str, voice_name: str, fmt: str, rate: int, stream: bool,
                 endpoint: str) -> Response:
    voice = ctx.voices.get(voice_name)
    # G.711 at 8 kHz: the line audio of a call, made exactly as a call's (engine.stream_line or encode_line)
    codec = {"mulaw": "PCMU", "alaw": "PCMA"}.get(fmt) if rate == 8000 else None
    if fmt in _S16 and rate == ctx.engine.sample_rate:
        codec = S16LE
    ctx.admit()
    try:
        chunks, first, timing = await _start(ctx, text, voice, codec, endpoint)
    except BaseException:
        ctx.done()
        raise
    ctx.metrics.requests.labels(endpoint, "200").inc()
    enc = None if codec in ("PCMU", "PCMA") else Encoder(fmt, ctx.engine.sample_rate, rate,
                                                          streamed=stream and fmt != "flac")
    headers = {**_timing_headers(timing), "X-Sample-Rate": str(rate)}
    media = CONTENT_TYPES[fmt]
    audio = _encoded(ctx, chunks, first, enc)
    if stream:
        return _Guarded(ctx, audio, media_type=media, headers=headers)
    try:
        body = b"".join([piece async for piece in audio])
    finally:
        ctx.done()
    if enc is not None:
        body = enc.whole(body)
    return Response(body, media_type=media, headers=headers)


async def _sse(audio: AsyncIterator[bytes], input_chars: int) -> AsyncIterator[bytes]:
    """OpenAI's speech events: ``speech.audio.delta`` (base64 audio) per chunk, then ``speech.audio.done``."""
    deltas = 0
    try:
        async for data in audio:
            deltas += 1
            event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
            yield f"data: {json.dumps(event)}\n\n".encode()
    finally:
        await audio.aclose()  # type: ignore[attr-defined]
    usage = {"input_tokens": input_chars, "output_tokens": deltas, "total_tokens": input_chars + deltas}
    yield f"data: {json.dumps({'type': 'speech.audio.done', 'usage': usage})}\n\n".encode()
