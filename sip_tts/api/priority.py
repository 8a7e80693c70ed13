"""Phone calls first: the engine as the calls and the HTTP API share it.

Calls' utterances go straight to the engine. An API utterance is handed to the
engine only while fewer utterances than the engine's capacity are in flight
(``max_streams`` for Chatterbox, 1 for espeak's single worker), so when the
engine is saturated a caller's utterance is never queued behind API ones: it
goes in at once, and API requests wait here for the next free slot.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import AsyncIterator, Callable

import numpy as np

from engine.audio import encode_line, float_to_s16le
from engine.base import TtsEngine, VoiceSpec
from engine.process import FIRST_ARRIVAL, S16LE


COALESCE_S = 0.1  # API audio after the first chunk goes on in pieces of at least this long


class CallsFirst:
    """Wraps an engine: ``stream``/``stream_line`` (calls) counted, ``api_*`` gated on free capacity."""

    def __init__(self, engine: TtsEngine, capacity: int, split_chars: int = 0) -> None:
        self.inner = engine
        self.capacity = max(1, capacity)
        self.split_chars = split_chars
        # While calls are in progress each API stream goes at most this many times real time (0: no limit):
        # an engine far faster than real time (espeak) would otherwise spend the CPU the calls' pacing needs.
        self.pace_with_calls = 0.0
        self.live_calls: Callable[[], int] = lambda: 0
        self.calls_active = 0
        self.api_active = 0
        self.api_waiting = 0
        self._waiters: list[asyncio.Future] = []
        # seconds from a caller's utterance asked to its first audio (the app points it at a histogram)
        self.first_audio: Callable[[float], None] = lambda seconds: None

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
        asked, first = time.monotonic(), True
        try:
            async for item in pieces:
                if first:
                    first = False
                    self.first_audio(time.monotonic() - asked)
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

    async def _pace(self, audio_s: float, started: float) -> None:
        """Calls in progress: hold this stream to ``pace_with_calls`` x real time (after its first second)."""
        if self.pace_with_calls <= 0 or not self.live_calls():
            return
        ahead = (audio_s - 1.0) / self.pace_with_calls - (time.perf_counter() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)

    def parts(self, text: str) -> list[str]:
        """The text in pieces of at most ``split_chars`` (whole sentences where they fit), each its own utterance,
        so a caller's utterance waits at most for one piece of a long API text (0: never split)."""
        if self.split_chars <= 0 or len(text) <= self.split_chars:
            return [text]
        out: list[str] = []
        for sentence in re.split(r"(?<=[.!?;:])\s+", text.strip()):
            while len(sentence) > self.split_chars:  # a run-on sentence: cut at the last space that fits
                cut = sentence.rfind(" ", 0, self.split_chars)
                cut = cut if cut > 0 else self.split_chars
                out.append(sentence[:cut])
                sentence = sentence[cut:].lstrip()
            if out and len(out[-1]) + 1 + len(sentence) <= self.split_chars:
                out[-1] += " " + sentence
            elif sentence:
                out.append(sentence)
        return out

    async def api_stream(self, text: str, voice: VoiceSpec, codec: str | None = None,
                         timing: dict | None = None) -> AsyncIterator:
        """An API utterance: float32 chunks at the engine's rate, or with ``codec`` 8 kHz G.711 bytes exactly as a
        call gets them, or with ``S16LE`` 16-bit little-endian bytes at the engine's rate (made in the engine's
        process where it runs in one). ``timing`` receives ``queued`` (waiting for a slot) and ``first`` (to the
        first chunk), in seconds, and with an engine in its own process ``arrived``: to that chunk's arrival in
        this process, before the loop handed it on.

        The first chunk goes out at once (time to first audio); after it, pieces of >= COALESCE_S: the work
        above (encoding, HTTP, the loop's wake-ups) is per piece, and an engine faster than real time
        (espeak: 20 ms chunks, ~200x) would otherwise spend the calls' loop on tiny ones."""
        t0 = time.perf_counter()
        FIRST_ARRIVAL.set(None)
        held: list = []
        size, need, rate, sent, started = 0, 0, 8000, 0, 0.0
        for part in self.parts(text):
            await self._acquire()  # for each piece: a caller that came meanwhile goes first
            if timing is not None and "queued" not in timing:
                timing["queued"] = time.perf_counter() - t0
            try:
                if codec is None:
                    pieces = self.inner.stream(part, voice)
                elif codec == S16LE:
                    s16 = getattr(self.inner, "stream_s16", None)
                    pieces = s16(part, voice) if s16 is not None else _s16(self.inner.stream(part, voice))
                else:
                    line = getattr(self.inner, "stream_line", None)
                    pieces = line(part, voice, codec) if line is not None else \
                        encode_line(self.inner.stream(part, voice), self.inner.sample_rate, codec)
                try:
                    async for item in pieces:
                        if timing is not None and "first" not in timing:
                            timing["first"] = time.perf_counter() - t0
                            if (arrived := FIRST_ARRIVAL.get()) is not None:
                                timing["arrived"] = arrived - t0
                        if not started:
                            # units of len(item) per second of audio
                            rate = 2 * self.inner.sample_rate if codec == S16LE else \
                                8000 if codec else self.inner.sample_rate
                            need, started, sent = int(COALESCE_S * rate), time.perf_counter(), len(item)
                            yield item
                            continue
                        held.append(item)
                        size += len(item)
                        if size >= need:
                            await self._pace(sent / rate, started)
                            yield b"".join(held) if codec else np.concatenate(held)
                            sent += size
                            held, size = [], 0
                finally:
                    await pieces.aclose()  # type: ignore[attr-defined]
            finally:
                self._release()
        if held:
            yield b"".join(held) if codec else np.concatenate(held)


async def _s16(chunks: AsyncIterator[np.ndarray]) -> AsyncIterator[bytes]:
    """An engine in this process: its chunks as 16-bit little-endian bytes (what ``stream_s16`` gives)."""
    try:
        async for chunk in chunks:
            yield float_to_s16le(chunk)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
