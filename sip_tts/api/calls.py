"""``/v1/calls``: the calls in progress, and live control of those a route handed to an application.

GET lists calls (state, caller, dialed, codec, start, first-audio latency, what is playing);
``say``, ``play`` and the WebSocket ``/v1/calls/{id}/stream`` drive a call that is in a
``live`` step (or a ``connect`` step): anything else is 409, since a script owns its audio.
``hangup`` ends any call. The WebSocket's protocol is sip_tts/live's; this module only
admits it (API key, per-key limit) and hands the connection over. A call placed with
``POST /v1/calls`` whose first step is ``live`` may be streamed from the moment the API
answered: its progress (ringing, answered, an outcome) comes on the stream.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import io
import logging
import time
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, File, Form, UploadFile, WebSocket
from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.prompt_cache import file_key, frames_of, render_wav

from .context import ApiContext
from .errors import ApiError, error_response, responses
from .speech import _not_blank

log = logging.getLogger("sip_tts.api")
MAX_SAY = 4096


class SayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_SAY)
    voice: str | None = Field(None, min_length=1, max_length=64, description="prompts.yaml's voices, or default")
    mode: Literal["queue", "interrupt"] = Field("queue", description="queue: after what is queued; "
                                                "interrupt: instead of it (clear first)")

    _blank = field_validator("text")(classmethod(lambda cls, v: _not_blank(v)))


class Queued(BaseModel):
    queued_ms: int = Field(description="audio queued ahead of the call's next frame when the request was done")


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds")


def build(ctx: ApiContext, dep, keys: list[bytes]) -> APIRouter:
    live = ctx.live
    router = APIRouter(tags=["calls"])
    assert live is not None

    def summary(call) -> dict:
        loop = asyncio.get_running_loop()
        wall = time.time() - loop.time()  # loop time -> Unix time
        sender = call.sender
        session = live.get(call.info.call_id)
        first = sender.first_audio_at if sender is not None else None
        return {"id": call.info.call_id, "state": call.phase.value, "caller": call.info.caller,
                "dialed": call.info.dialed, "codec": call.info.codec, "started": _iso(call.invite_at + wall),
                "answered": _iso(call.confirmed_at + wall) if call.confirmed_at is not None else None,
                "first_audio_ms": round((first - call.invite_at) * 1000, 1) if first is not None else None,
                "playing": {"step": getattr(call.source, "playing", None),
                            "queued_ms": round(call.queue.pending * 20)},
                "live": session.status() if session is not None else None}

    def find(call_id: str):
        call = live.calls().get(call_id)
        if call is None or call.ended:
            raise ApiError(404, f"call {call_id!r} not found (GET /v1/calls lists them)", "call_id", "call_not_found")
        return call

    def session_of(call_id: str):
        find(call_id)
        session = live.get(call_id)
        if session is None or not session.active:
            raise ApiError(409, f"call {call_id!r} is not under live control (its route plays a script: "
                                "give it a live step)", "call_id", "not_live")
        return session

    @router.get("/v1/calls", dependencies=[dep], responses=responses(401))
    async def list_calls() -> dict:
        return {"object": "list", "data": [summary(c) for c in live.calls().values() if not c.ended]}

    @router.get("/v1/calls/{call_id}", dependencies=[dep], responses=responses(401, 404))
    async def get_call(call_id: str) -> dict:
        return summary(find(call_id))

    @router.post("/v1/calls/{call_id}/say", status_code=202, dependencies=[dep], response_model=Queued,
                 responses=responses(400, 401, 404, 409, 429))
    async def say(call_id: str, body: SayRequest) -> Queued:
        session = session_of(call_id)
        queued = session.queued_ms
        from sip_tts.live.session import Backlog

        try:
            session.say(body.text, body.voice, interrupt=body.mode == "interrupt")
        except KeyError:
            raise ApiError(404, f"voice {body.voice!r} not found", "voice", "voice_not_found") from None
        except Backlog as exc:
            raise ApiError(429, str(exc), "text", "backlog", {"Retry-After": "1"}) from None
        return Queued(queued_ms=0 if body.mode == "interrupt" else queued)

    @router.post("/v1/calls/{call_id}/play", status_code=202, dependencies=[dep], response_model=Queued,
                 responses=responses(400, 401, 404, 409, 413))
    async def play(call_id: str, file: UploadFile | None = File(None, description="a WAV (any rate, mono or stereo)"),
                   prompt: str | None = Form(None, description="a WAV beside prompts.yaml (as a play step names it; "
                                                               "converted once and cached)"),
                   mode: Literal["queue", "interrupt"] = Form("queue")) -> Queued:
        session = session_of(call_id)
        if (file is None) == (prompt is None):
            raise ApiError(400, "file or prompt: give exactly one", "file", "invalid_value")
        codec = session.info.codec
        if file is not None:
            data = await file.read()
            try:  # (decoding and resampling a long WAV takes a while: off the calls' loop)
                frames = frames_of(await asyncio.to_thread(render_wav, io.BytesIO(data), codec), codec)
            except Exception:  # wave.Error, EOFError, ValueError: not a WAV we read
                raise ApiError(400, "file: not a PCM WAV file", "file", "invalid_audio") from None
        else:
            frames = await _prompt_frames(ctx, prompt or "", codec)
        queued = session.queued_ms
        session.play(frames, interrupt=mode == "interrupt")
        return Queued(queued_ms=0 if mode == "interrupt" else queued)

    @router.post("/v1/calls/{call_id}/hangup", status_code=202, dependencies=[dep], responses=responses(401, 404))
    async def hangup(call_id: str) -> dict:
        find(call_id)
        live.end_call(call_id, "api-hangup")
        return {"id": call_id, "hangup": True}

    @router.websocket("/v1/calls/{call_id}/stream")
    async def stream(websocket: WebSocket, call_id: str) -> None:
        from sip_tts.live import SessionBusy, StarletteChannel

        key = _key_of(websocket, keys)
        if key is None:
            return await websocket.send_denial_response(error_response(
                401, "Authorization: a valid 'Bearer KEY' (api.keys) is needed", "Authorization", "invalid_api_key",
                {"WWW-Authenticate": "Bearer"}))
        try:
            find(call_id)
            await live.session_soon(call_id)  # a call just placed: its first step may not have run yet
            session = session_of(call_id)
        except ApiError as exc:
            over = live.outcome_of(call_id) if exc.code == "call_not_found" else None
            if over is not None:  # placed, and failed before the application came: tell it, then close
                await websocket.accept()
                for text in over:
                    await websocket.send_text(text)
                return await websocket.close(1000)
            return await websocket.send_denial_response(error_response(exc.status, exc.message, exc.param, exc.code))
        if session.outbox is not None:
            return await websocket.send_denial_response(error_response(
                409, "another application is attached to this call", "call_id", "busy"))
        if not live.stream_opened(key):
            return await websocket.send_denial_response(error_response(
                429, f"more than api.max_call_streams_per_key={live.max_streams_per_key} call streams open "
                     "with this key", None, "too_many_streams", {"Retry-After": "1"}))
        counted = [True]

        def release() -> None:  # once: when the session lets go (before the close), or here
            if counted[0]:
                counted[0] = False
                live.stream_closed(key)

        try:
            await websocket.accept()
            await session.serve(StarletteChannel(websocket), detached=release)
        except SessionBusy:
            await websocket.close(1008, "another application is attached")
        finally:
            release()

    return router


def _key_of(websocket: WebSocket, keys: list[bytes]) -> str | None:
    """The API key the WebSocket presented ("" when none are configured); None: not a valid one."""
    if not keys:
        return ""
    scheme, _, given = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    for k in keys:
        if hmac.compare_digest(given.encode(), k):
            return k.decode()
    return None


async def _prompt_frames(ctx: ApiContext, name: str, codec: str) -> list[bytes]:
    """A WAV file beside prompts.yaml (no path outside that folder), as cached frames (converted
    once, on a thread)."""
    speech = ctx.live.speech() if callable(getattr(ctx.live, "speech", None)) else None
    if speech is None:
        raise ApiError(404, "prompt: no prompts loaded", "prompt", "prompt_not_found")
    base = Path(speech.prompts.resolve(".")).resolve()
    path = Path(speech.prompts.resolve(name)).resolve()
    if base not in path.parents or not path.is_file():
        raise ApiError(404, f"prompt: {name!r} is not a file beside prompts.yaml", "prompt", "prompt_not_found")
    try:
        key = file_key(path, codec)
        frames = speech.cache.get(key)  # (the cache is the loop's: only the conversion goes to a thread)
        if frames is None:
            frames = frames_of(await asyncio.to_thread(render_wav, path, codec), codec)
            speech.cache.put(key, frames)
        return frames
    except Exception:
        raise ApiError(400, f"prompt: {name!r} is not a PCM WAV file", "prompt", "invalid_audio") from None
