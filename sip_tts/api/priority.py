"""Phone calls first: the engine as the calls and the HTTP API share it.

Calls' utterances go straight to the engine. An API utterance is handed to the
engine only while fewer utterances than the engine's capacity are in flight
(``max_streams`` for Chatterbox, 1 for espeak's single worker), so when the
engine is saturated a caller's utterance is never queued behind API ones: it
goes in at once, and API requests wait here for the next free slot.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import numpy as np

from engine.audio import encode_line
from engine.base import TtsEngine, VoiceSpec


class CallsFirst:
    """Wraps an engine: ``stream``/``stream_line`` (calls) counted, ``api_*`` gated on free capacity."""

    def __init__(self, engine: TtsEngine, capacity: int) -> None:
        self.inner = engine
        self.capacity = max(1, capacity)
        self.calls_active = 0
        self.api_active = 0
        self.api_waiting = 0
        self._waiters: list[asyncio.Future] = []

    def __getattr__(self, name: str) -> object:  # name, sample_rate, start, close, stats, available, ...
        return getattr(self.inner, name)

    # -- the calls' side ------------------------------------------------------------
    def stream(self, text: str, voice: VoiceSpec, background: bool = False) -> AsyncIterator[np.ndarray]:
        return self._counted(self.inner.stream(text, voice, background=background), background)

    def stream_line(self, text: str, voice: VoiceSpec, codec: str, background: bool = False) -> AsyncIterator[bytes]:
        line = getattr(self.inner, "stream_line", None)
        pieces = line(text, voice, codec, background=background) if line is not None else \
            encode_line(self.inner.stream(text, voice, background=background), self.inner.sample_rate, codec)
        return self._counted(pieces, background)

    async def _counted(self, pieces: AsyncIterator, background: bool) -> AsyncIterator:
        if background:  # prompt-cache rendering: nobody listens, it does not hold API requests back
            async for item in pieces:
                yield item
            return
        self.calls_active += 1
        try:
            async for item in pieces:
                yield item
        finally:
            self.calls_active -= 1
            await pieces.aclose()  # type: ignore[attr-defined]
            self._wake()

    # -- the API's side -------------------------------------------------------------
    def _has_room(self) -> bool:
        return self.calls_active + self.api_active < self.capacity

    def _wake(self) -> None:
        while self._waiters and self._has_room():
            fut = self._waiters.pop(0)
            if not fut.done():
                self.api_active += 1  # handed over: the slot is the waiter's
                fut.set_result(None)
                return

    async def _acquire(self) -> None:
        if self._has_room() and not self._waiters:
            self.api_active += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.api_waiting += 1
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # the slot was handed over as we were cancelled
                self._release()
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise
        finally:
            self.api_waiting -= 1

    def _release(self) -> None:
        self.api_active -= 1
        self._wake()

    async def api_stream(self, text: str, voice: VoiceSpec, codec: str | None = None,
                         timing: dict | None = None) -> AsyncIterator:
        """An API utterance: float32 chunks at the engine's rate, or with ``codec`` 8 kHz G.711 bytes exactly as a
        call gets them. ``timing`` receives ``queued`` (waiting for a slot) and ``first`` (to the first chunk),
        in seconds."""
        t0 = time.perf_counter()
        await self._acquire()
        if timing is not None:
            timing["queued"] = time.perf_counter() - t0
        try:
            if codec is None:
                pieces = self.inner.stream(text, voice)
            else:
                line = getattr(self.inner, "stream_line", None)
                pieces = line(text, voice, codec) if line is not None else \
                    encode_line(self.inner.stream(text, voice), self.inner.sample_rate, codec)
            try:
                async for item in pieces:
                    if timing is not None and "first" not in timing:
                        timing["first"] = time.perf_counter() - t0
                    yield item
            finally:
                await pieces.aclose()  # type: ignore[attr-defined]
        finally:
            self._release()
