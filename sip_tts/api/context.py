"""What the HTTP API needs from the server: the shared engine, the voices, health, metrics, limits.

In ``own_thread`` mode the HTTP loop is not the engine's loop: every engine
stream is then run on the server's loop and its chunks handed across
(``run_stream``), so the engine and the calls-first gate live on one loop only.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from config.schema import ApiSettings
from engine.base import VoiceSpec

from .errors import ApiError
from .priority import CallsFirst

VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# OpenAI's voice names: code written for OpenAI runs unchanged and hears the default voice
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


@dataclass
class Voices:
    """default, the voices of prompts.yaml, and uploaded ones (``<dir>/<name>.wav``, found again at start-up)."""

    default: VoiceSpec
    configured: dict[str, VoiceSpec]
    directory: Path
    engine_name: str
    uploaded: dict[str, VoiceSpec] = field(default_factory=dict)

    def load(self) -> None:
        if self.directory.is_dir():
            for wav in sorted(self.directory.glob("*.wav")):
                if VOICE_NAME.match(wav.stem):
                    self.uploaded[wav.stem] = self.spec_for_upload(wav.stem, wav)

    @staticmethod
    def spec_for_upload(name: str, path: Path) -> VoiceSpec:
        return VoiceSpec(name, (("voice_wav", str(path)),))

    def get(self, name: str, param: str = "voice") -> VoiceSpec:
        if name == "default" or name in OPENAI_VOICES:
            return self.default
        spec = self.configured.get(name) or self.uploaded.get(name)
        if spec is None:
            raise ApiError(404, f"voice {name!r} not found (GET /v1/voices lists them)", param, "voice_not_found")
        return spec

    def listing(self) -> list[dict]:
        out = [{"name": "default", "source": "builtin"}]
        out += [{"name": n, "source": "config"} for n in self.configured]
        out += [{"name": n, "source": "uploaded"} for n in self.uploaded]
        out += [{"name": n, "source": "alias", "alias_of": "default"} for n in OPENAI_VOICES]
        return out


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("sip_tts_api_requests", "HTTP API synthesis requests, by endpoint and status",
                                ["endpoint", "status"], registry=registry)
        self.active = Gauge("sip_tts_api_active_requests", "synthesis requests in progress", registry=registry)
        self.waiting = Gauge("sip_tts_api_waiting_utterances", "API utterances waiting for a free engine slot "
                             "(calls go first)", registry=registry)
        self.first_audio = Histogram("sip_tts_api_first_audio_seconds", "request to the engine's first audio",
                                     buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=registry)
        self.cancelled = Counter("sip_tts_api_cancelled", "streams stopped because the client went away",
                                 registry=registry)


@dataclass
class ApiContext:
    settings: ApiSettings
    engine: CallsFirst
    voices: Voices
    health: Callable[[], tuple[int, str]]
    render_metrics: Callable[[], bytes]
    metrics: ApiMetrics
    speed_native: bool  # espeak: speed scales its rate; chatterbox has none
    engine_loop: asyncio.AbstractEventLoop | None = None  # set in own_thread mode
    outbound: Any = None  # sip_tts.outbound.Originator: POST /v1/calls (None: no SIP)
    live: object = None  # sip_tts.live.LiveCalls: the calls in progress, for /v1/calls (None: no SIP)
    active: int = 0

    @property
    def model_ids(self) -> list[str]:
        return [self.engine.name, *OPENAI_MODELS]

    def admit(self) -> None:
        """One more synthesis request, or 429/503."""
        code, state = self.health()
        if code != 200 and state in ("draining", "engine down"):
            raise ApiError(503, f"server {state}", None, state.replace(" ", "_"), {"Retry-After": "5"})
        if not bool(getattr(self.engine, "available", True)):
            raise ApiError(503, "engine down (restarting)", None, "engine_down", {"Retry-After": "2"})
        if self.active >= self.settings.max_concurrent:
            raise ApiError(429, f"more than api.max_concurrent={self.settings.max_concurrent} requests at once",
                           None, "too_many_requests", {"Retry-After": "1"})
        self.active += 1
        self.metrics.active.set(self.active)

    def done(self) -> None:
        self.active -= 1
        self.metrics.active.set(self.active)

    def run_stream(self, text: str, voice: VoiceSpec, codec: str | None, timing: dict) -> AsyncIterator:
        """The engine's chunks for this utterance, on the loop this request runs on (the gate's own iterator
        when that is the engine's loop: no layer between them for every chunk to pass)."""
        if self.engine_loop is None:
            return self.engine.api_stream(text, voice, codec, timing)
        return self._across(text, voice, codec, timing)

    async def _across(self, text: str, voice: VoiceSpec, codec: str | None, timing: dict) -> AsyncIterator:
        """``own_thread``: the utterance runs on the engine's loop, its chunks handed over to this one."""
        here = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        end = object()

        async def pump() -> None:
            try:
                async for item in self.engine.api_stream(text, voice, codec, timing):
                    here.call_soon_threadsafe(q.put_nowait, item)
                here.call_soon_threadsafe(q.put_nowait, end)
            except BaseException as exc:  # the engine's error, or our cancel (nobody reads it then)
                here.call_soon_threadsafe(q.put_nowait, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise

        fut = asyncio.run_coroutine_threadsafe(pump(), self.engine_loop)
        try:
            while True:
                item = await q.get()
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            fut.cancel()
