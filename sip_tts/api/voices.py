"""``/v1/models`` and ``/v1/voices``: list, upload (a reference WAV), delete."""

from __future__ import annotations

import io
import logging
import os
import tempfile

import soundfile
from fastapi import APIRouter, File, Form, Response, UploadFile
from pydantic import BaseModel

from engine.base import EngineError

from .context import OPENAI_VOICES, VOICE_NAME, ApiContext
from .errors import ApiError, responses

log = logging.getLogger("sip_tts.api")
MIN_SECONDS = 5.0  # Chatterbox's reference needs at least this much speech


class Model(BaseModel):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "sip-tts"


class ModelList(BaseModel):
    object: str = "list"
    data: list[Model]


class VoiceInfo(BaseModel):
    name: str
    source: str
    alias_of: str | None = None
    seconds: float | None = None


class VoiceList(BaseModel):
    voices: list[VoiceInfo]


def build(ctx: ApiContext, auth) -> APIRouter:
    router = APIRouter(dependencies=[auth])

    @router.get("/v1/models", response_model=ModelList, responses=responses(401))
    async def models() -> ModelList:
        return ModelList(data=[Model(id=m) for m in ctx.model_ids])

    @router.get("/v1/voices", response_model=VoiceList, responses=responses(401))
    async def voices() -> VoiceList:
        return VoiceList(voices=[VoiceInfo(**v) for v in ctx.voices.listing()])

    @router.post("/v1/voices", response_model=VoiceInfo, status_code=201, responses=responses(400, 401, 409, 413, 503),
                 summary="Upload a reference WAV (>= 5 s, any rate) as a new voice")
    async def upload(name: str = Form(..., max_length=64), file: UploadFile = File(...)) -> VoiceInfo:
        if not VOICE_NAME.match(name):
            raise ApiError(400, "name: letters, digits, '_', '-', '.' (1-64, not starting with a symbol)", "name")
        if name == "default" or name in OPENAI_VOICES or name in ctx.voices.configured or name in ctx.voices.uploaded:
            raise ApiError(409, f"name: voice {name!r} exists", "name", "voice_exists")
        if ctx.voices.engine_name != "chatterbox":
            raise ApiError(400, f"file: engine {ctx.voices.engine_name} does not clone voices from audio "
                                "(its voices are set in prompts.yaml)", "file", "unsupported")
        data = await file.read()
        try:
            info = soundfile.info(io.BytesIO(data))
        except (RuntimeError, soundfile.LibsndfileError):
            raise ApiError(400, "file: not a readable audio file (WAV, FLAC, OGG)", "file", "invalid_audio") from None
        if info.duration < MIN_SECONDS:
            raise ApiError(400, f"file: {info.duration:.1f} s of audio; a voice reference needs at least "
                                f"{MIN_SECONDS:.0f} s", "file", "too_short")
        directory = ctx.voices.directory
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        path = directory / f"{name}.wav"
        os.replace(tmp, path)
        spec = ctx.voices.spec_for_upload(name, path)
        # The conditioning is computed now, once (the engine keeps it in voice_cache_dir across restarts),
        # by the first audio of a short utterance in the new voice.
        ctx.admit()
        try:
            chunks = ctx.run_stream("Hello.", spec, None, {})
            try:
                await chunks.__anext__()
            except StopAsyncIteration:
                pass
            finally:
                await chunks.aclose()  # type: ignore[attr-defined]
        except (EngineError, ValueError) as exc:
            path.unlink(missing_ok=True)
            raise ApiError(400, f"file: the engine cannot use it: {exc}", "file", "invalid_audio") from None
        finally:
            ctx.done()
        ctx.voices.uploaded[name] = spec
        log.info("api: voice %r uploaded (%.1f s)", name, info.duration)
        return VoiceInfo(name=name, source="uploaded", seconds=round(info.duration, 2))

    @router.delete("/v1/voices/{name}", status_code=204, response_class=Response,
                   responses={204: {"description": "deleted"}, **responses(400, 401, 404)})
    async def delete(name: str) -> Response:
        if name not in ctx.voices.uploaded:
            if name == "default" or name in ctx.voices.configured or name in OPENAI_VOICES:
                raise ApiError(400, f"name: voice {name!r} is not an uploaded one", "name", "not_deletable")
            raise ApiError(404, f"voice {name!r} not found", "name", "voice_not_found")
        del ctx.voices.uploaded[name]
        (ctx.voices.directory / f"{name}.wav").unlink(missing_ok=True)
        return Response(status_code=204)

    return router
