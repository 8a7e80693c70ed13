"""The embedded default engine: espeak-ng through the espeakng-loader wheel.

espeak-ng keeps process-wide state, so one worker thread owns it and runs the
jobs one after another; each job streams 20 ms chunks back to the event loop
through ``call_soon_threadsafe``. Cancelling a job makes the synth callback
return 1, which aborts the utterance inside espeak-ng.
"""

from __future__ import annotations

import asyncio
import ctypes
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .base import EngineBase, EngineError, EngineStats, Resolve, TtsEngine, VoiceSpec

NATIVE_RATE = 22050  # espeak-ng's output rate

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE, _PITCH = 1, 3
_SYNTH_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass
class _Job:
    text: str
    voice: VoiceSpec
    loop: asyncio.AbstractEventLoop
    out: "asyncio.Queue[np.ndarray | BaseException | None]"
    cancelled: threading.Event = field(default_factory=threading.Event)


class EspeakSettings(BaseModel):
    """server.yaml ``engine: {kind: espeak, ...}``: the embedded CPU voice (the default)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["espeak"] = "espeak"
    voice: str = "en-us"
    rate: int = Field(165, ge=80, le=450, description="words per minute")
    pitch: int = Field(50, ge=0, le=99)
    process: bool = Field(False, description="run espeak-ng in its own process (restarted if it dies)")

    voice_fields: ClassVar[tuple[str, ...]] = ("voice", "rate", "pitch")  # what a named voice may set

    def build(self, resolve: Resolve, shared: object = None) -> tuple[TtsEngine, VoiceSpec]:
        # shared: nothing per voice to share (its prompts are shared by the prompt cache)
        voice = VoiceSpec("default", (("voice", self.voice), ("rate", self.rate), ("pitch", self.pitch)))
        if self.process:
            from .process import EngineProcess

            return EngineProcess("espeak", NATIVE_RATE, "engine.espeak:EspeakEngine",
                                 kwargs={"default_voice": self.voice}), voice
        return EspeakEngine(default_voice=self.voice), voice

    @classmethod
    def named_voice(cls, name: str, default: VoiceSpec, fields: dict[str, object],
                    resolve: Callable[[str], Path]) -> VoiceSpec:
        """The default voice with the named voice's settings over it."""
        return VoiceSpec(name, tuple({**dict(default.settings), **fields}.items()))


class EspeakEngine(EngineBase):
    """Streaming espeak-ng, serialised on one worker thread."""

    name = "espeak"

    def __init__(self, default_voice: str = "en-us", buffer_ms: int = 20) -> None:
        self.default_voice = default_voice
        self._buffer_ms = buffer_ms
        self.sample_rate = NATIVE_RATE
        self._jobs: "queue.Queue[_Job | None]" = queue.Queue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._init_error: BaseException | None = None
        self._lib: ctypes.CDLL | None = None
        self._current: _Job | None = None
        self._callback = _SYNTH_CB(self._on_audio)  # kept alive for the C library
        self.stats = EngineStats()

    async def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="espeak-worker", daemon=True)
            self._thread.start()
        await asyncio.get_running_loop().run_in_executor(None, self._ready.wait)
        if self._init_error is not None:
            raise EngineError(f"espeak-ng failed to start: {self._init_error}") from self._init_error

    def queue_depth(self) -> int:
        """Utterances waiting for the worker thread."""
        return self._jobs.qsize()

    async def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5)
            self._thread = None

    async def stream(self, text: str, voice: VoiceSpec, background: bool = False) -> AsyncIterator[np.ndarray]:
        if self._thread is None:
            await self.start()
        loop = asyncio.get_running_loop()
        job = _Job(text, voice, loop, asyncio.Queue())
        self._jobs.put(job)
        try:
            while True:
                item = await job.out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise EngineError(str(item)) from item
                yield item
        finally:
            job.cancelled.set()

    # -- worker thread --------------------------------------------------------------
    def _load(self) -> ctypes.CDLL:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CB]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, self._buffer_ms,
                                     espeakng_loader.get_data_path().encode(), _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EngineError(f"espeak_Initialize returned {rate}")
        self.sample_rate = rate
        lib.espeak_SetSynthCallback(self._callback)
        return lib

    def _run(self) -> None:
        try:
            self._lib = self._load()
        except BaseException as exc:  # reported to start()
            self._init_error = exc
            self._ready.set()
            return
        self._ready.set()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.cancelled.is_set():
                continue
            try:
                self._synth(job)
                job.loop.call_soon_threadsafe(job.out.put_nowait, None)
            except BaseException as exc:
                job.loop.call_soon_threadsafe(job.out.put_nowait, exc)

    def _synth(self, job: _Job) -> None:
        lib = self._lib
        assert lib is not None
        name = str(job.voice.get("voice") or self.default_voice)
        if lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise EngineError(f"espeak-ng voice {name!r} not found")
        lib.espeak_SetParameter(_RATE, int(job.voice.get("rate", 175)), 0)  # type: ignore[arg-type]
        lib.espeak_SetParameter(_PITCH, int(job.voice.get("pitch", 50)), 0)  # type: ignore[arg-type]
        data = job.text.encode("utf-8") + b"\0"
        self._current = job
        t0 = time.perf_counter()
        try:
            lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        finally:
            self._current = None
            self.stats.steps += 1
            self.stats.step_items += 1
            self.stats.busy_seconds += time.perf_counter() - t0

    def _on_audio(self, wav: "ctypes._Pointer[ctypes.c_short]", n: int, events: int) -> int:
        job = self._current
        if job is None or job.cancelled.is_set():
            return 1  # abort the utterance
        if n > 0:
            self.stats.audio_seconds += n / self.sample_rate
            pcm = np.ctypeslib.as_array(wav, shape=(n,)).astype(np.float32) / 32768.0
            job.loop.call_soon_threadsafe(job.out.put_nowait, pcm)
        return 0
