"""A benchmark-only engine that hands out audio the way a batched GPU engine does: in bursts.

Chatterbox on a GPU decodes every stream together, so the first windows of N
requests made at once are finished by one S3Gen batch and reach the server in
the same millisecond; the API then turns N chunks into N HTTP bodies one after
another on its one event loop. espeak (one utterance at a time) never shows that.
This engine does, on any CPU: one worker thread ticks every ``period_ms`` and
releases, for every stream whose audio is due, its next window, all in the same
tick; first windows come ``first_ms`` after a stream was submitted, rounded up
to the next tick (so requests made together get their first audio together);
later windows as ``speed`` x real time allows. Window sizes grow as
Chatterbox's do (0.4 s, 0.6 s, then 1 s). With ``process: true`` (the default,
as Chatterbox's) it runs in its own process behind ``engine.process``, so its
chunks cross the same pipe and reader thread as the GPU engine's.

It is not registered in the product: ``python benchmarks/burst_engine.py serve
--config server.yaml`` adds the kind ``burst`` and runs ``sip-tts`` (the settings
subclass Chatterbox's, so the API gives it ``max_streams`` slots as it gives
Chatterbox). ``benchmarks/api_load.py --engine burst`` uses it.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import AsyncIterator, Literal

import numpy as np
from pydantic import Field

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.base import EngineBase, EngineError, EngineStats, VoiceSpec  # noqa: E402
from engine.chatterbox.settings import ChatterboxSettings  # noqa: E402

RATE = 24000
WINDOWS_S = (0.4, 0.6)  # then 1 s windows (Chatterbox: 10, 15, 25 tokens at 25 tokens/s)


class _Stream:
    def __init__(self, loop: asyncio.AbstractEventLoop, submitted: float, total: int) -> None:
        self.loop = loop
        self.out: asyncio.Queue = asyncio.Queue()
        self.submitted = submitted
        self.total = total
        self.sent = 0
        self.index = 0
        self.cancelled = False


class BurstEngine(EngineBase):
    """Bursty synthetic audio (a quiet 200 Hz tone) from one ticking worker thread."""

    name = "burst"
    sample_rate = RATE

    def __init__(self, first_ms: float = 100.0, period_ms: float = 40.0, audio_s: float = 6.0,
                 speed: float = 4.0) -> None:
        self.first_s = first_ms / 1e3
        self.period_s = period_ms / 1e3
        self.audio_s = audio_s
        self.speed = speed
        self.stats = EngineStats()
        self._streams: list[_Stream] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._tone = (0.1 * np.sin(2 * np.pi * 200 * np.arange(RATE) / RATE)).astype(np.float32)

    async def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="burst-engine", daemon=True)
            self._thread.start()

    def _window(self, s: _Stream) -> np.ndarray:
        n = int(RATE * (WINDOWS_S[s.index] if s.index < len(WINDOWS_S) else 1.0))
        n = min(n, s.total - s.sent)
        start = s.sent % RATE
        return np.resize(np.roll(self._tone, -start), n)

    def _due(self, s: _Stream, now: float) -> bool:
        if s.index == 0:
            return now >= s.submitted + self.first_s
        return now >= s.submitted + self.first_s + s.sent / RATE / self.speed

    def _run(self) -> None:
        try:
            self._ticks()
        except BaseException as exc:  # every stream hears of it (a benchmark that hangs says nothing)
            with self._lock:
                for s in self._streams:
                    s.loop.call_soon_threadsafe(s.out.put_nowait, exc)
            raise

    def _ticks(self) -> None:
        tick = time.monotonic()
        while not self._stop:
            with self._lock:
                idle = not self._streams
            if idle:
                self._wake.wait(1.0)
                self._wake.clear()
                tick = time.monotonic()  # the batch clock starts with the first request
            tick += self.period_s
            time.sleep(max(0.0, tick - time.monotonic()))
            now = time.monotonic()
            with self._lock:
                streams = list(self._streams)
            started = time.perf_counter()
            for s in streams:  # one tick: every due stream's window, back to back (one S3Gen batch)
                if s.cancelled or not self._due(s, now):
                    continue
                chunk = self._window(s)
                s.sent += len(chunk)
                s.index += 1
                s.loop.call_soon_threadsafe(s.out.put_nowait, chunk)
                self.stats.audio_seconds += len(chunk) / RATE
                if s.sent >= s.total:
                    s.loop.call_soon_threadsafe(s.out.put_nowait, None)
                    self._forget(s)
            self.stats.steps += 1
            self.stats.busy_seconds += time.perf_counter() - started

    async def stream(self, text: str, voice: VoiceSpec, background: bool = False) -> AsyncIterator[np.ndarray]:
        await self.start()
        s = _Stream(asyncio.get_running_loop(), time.monotonic(), int(RATE * self.audio_s))
        with self._lock:
            self._streams.append(s)
        self._wake.set()
        try:
            while (item := await s.out.get()) is not None:
                if isinstance(item, BaseException):
                    raise EngineError(f"burst engine: {item}")
                yield item
        finally:
            s.cancelled = True
            self._forget(s)

    def _forget(self, s: _Stream) -> None:
        """(Both sides call it: the worker at a stream's end, the stream when its reader stops.)"""
        with self._lock:
            if s in self._streams:
                self._streams.remove(s)

    async def close(self) -> None:
        self._stop = True
        self._wake.set()


class BurstSettings(ChatterboxSettings):
    """server.yaml ``engine: {kind: burst, ...}`` (benchmarks only)."""

    kind: Literal["burst"]  # type: ignore[assignment]
    model_dir: str = ""
    first_ms: float = Field(100.0, description="submission to first window (rounded up to a tick)")
    period_ms: float = Field(40.0, description="the batch clock: every window goes out on a tick")
    audio_s: float = Field(6.0, description="audio per utterance")
    speed: float = Field(4.0, description="after the first window, audio per stream at this x real time")

    def build(self, resolve, shared=None):  # type: ignore[no-untyped-def]
        kwargs = {"first_ms": self.first_ms, "period_ms": self.period_ms, "audio_s": self.audio_s,
                  "speed": self.speed}
        if self.process:
            from engine.process import EngineProcess

            return EngineProcess("burst", RATE, "benchmarks.burst_engine:BurstEngine", kwargs=kwargs), VoiceSpec()
        return BurstEngine(**kwargs), VoiceSpec()


def main(argv: list[str]) -> int:
    """``sip-tts`` with the ``burst`` kind added (before the config schema is built from the registry)."""
    from benchmarks import burst_engine  # this module by its name (run as a script, it is __main__)
    from engine.registry import ENGINES

    ENGINES["burst"] = burst_engine.BurstSettings
    from sip_tts.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
