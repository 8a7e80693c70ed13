"""Rendered prompts as ready-to-send G.711 frames, so fixed prompts cost nothing at call time.

A prompt is keyed by (engine, voice settings, text, codec) — or, for a WAV file,
by (path, size, mtime, codec). Frames are 160 bytes (20 ms at 8 kHz); the last
one is padded with the codec's silence. Memory is bounded by a byte budget with
least-recently-used eviction; with a directory, rendered prompts are also kept
on disk (one file per key, written atomically) and survive restarts. Hits and
misses are counted for the metrics. With ``shared`` (a fleet's Redis, see
``shared_cache``), spoken prompts also go to and come from a second level that
other instances fill: ``fetch``/``store`` use it, ``get``/``put`` stay local.

Knows nothing of SIP: callers push the frames into whatever queue they own.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import wave
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import soxr

from media import FRAME_SAMPLES as FRAME, SAMPLE_RATE, silence

from .audio import encode_g711, float_to_int16
from .base import TtsEngine, VoiceSpec
from .shared_cache import SharedCache


def frames_of(data: bytes, codec: str) -> list[bytes]:
    """Cut encoded audio into 20 ms frames, the last one padded with silence (the code of 0)."""
    if len(data) % FRAME:
        data += silence(codec, FRAME - len(data) % FRAME)
    return _split(data)


def _split(data: bytes) -> list[bytes]:
    return [data[i:i + FRAME] for i in range(0, len(data), FRAME)]


def speech_key(engine: str, voice: VoiceSpec, text: str, codec: str) -> str:
    raw = repr(("speech", engine, voice.name, voice.settings, text, codec))
    return hashlib.sha256(raw.encode()).hexdigest()


def file_key(path: str | Path, codec: str) -> str:
    st = os.stat(path)
    raw = repr(("file", str(Path(path).resolve()), st.st_size, st.st_mtime_ns, codec))
    return hashlib.sha256(raw.encode()).hexdigest()


async def render_speech(engine: TtsEngine, voice: VoiceSpec, text: str, codec: str,
                        push: Callable[[bytes], None] | None = None, background: bool = False) -> bytes:
    """Synthesise ``text`` as 8 kHz G.711, handing each piece to ``push`` as it is ready;
    returns all of it. ``background``: nobody is listening (rendering into the cache).
    An engine in its own process does the resampling and encoding there, off this event loop."""
    out = bytearray()
    async for data in engine.stream_line(text, voice, codec, background=background):
        out += data
        if push is not None:
            push(data)
    return bytes(out)


def render_wav(path: "str | Path | BinaryIO", codec: str) -> bytes:
    """A WAV file (8/16/24/32-bit PCM, any rate, mono or stereo; a path or an open binary file) as 8 kHz G.711."""
    with wave.open(path if hasattr(path, "read") else str(path), "rb") as w:  # type: ignore[arg-type]
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)).astype(np.float32)
    elif width == 4:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2**31
    else:
        raise ValueError(f"{path}: {8 * width}-bit samples are not supported")
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    if rate != SAMPLE_RATE:
        x = soxr.resample(x, rate, SAMPLE_RATE, quality="HQ")
    return encode_g711(float_to_int16(np.clip(x, -1, 1)), codec)


class PromptCache:
    def __init__(self, max_bytes: int, directory: str | Path | None = None,
                 shared: SharedCache | None = None) -> None:
        self.max_bytes = max_bytes
        self.directory = Path(directory) if directory else None
        self.shared = shared
        self._items: OrderedDict[str, list[bytes]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> list[bytes] | None:
        frames = self._items.get(key)
        if frames is not None:
            self._items.move_to_end(key)
            self.hits += 1
            return frames
        if self.directory is not None:
            path = self.directory / f"{key}.g711"
            try:
                data = path.read_bytes()
            except OSError:
                data = b""
            if data and len(data) % FRAME == 0:
                frames = _split(data)
                self._insert(key, frames)
                self.hits += 1
                return frames
        self.misses += 1
        return None

    async def fetch(self, key: str, background: bool = False) -> list[bytes] | None:
        """Like ``get``, then the shared level (waiting at most its timeout; ``background``: nobody is
        listening, e.g. warming, so ten times that); a shared hit is kept locally."""
        frames = self.get(key)
        if frames is not None or self.shared is None:
            return frames
        timeout = self.shared.config.timeout_ms * 10 if background else None
        data = await self.shared.get("prompt", key, timeout)
        if not data or len(data) % FRAME:
            return None
        frames = _split(data)
        self.misses -= 1  # not rendered after all
        self.hits += 1
        self._insert(key, frames)
        if self.directory is not None:  # the disk copy after the caller has its frames, off the loop
            asyncio.get_running_loop().run_in_executor(None, self._write, key, frames)
        return frames

    def store(self, key: str, frames: list[bytes]) -> None:
        """``put``, and hand the frames to the shared level (in the background)."""
        self.put(key, frames)
        if self.shared is not None:
            self.shared.put("prompt", key, b"".join(frames))

    def peek(self, key: str) -> bool:
        """Whether ``key`` is cached (memory or disk), without counting or reordering."""
        return key in self._items or (self.directory is not None and (self.directory / f"{key}.g711").exists())

    def put(self, key: str, frames: list[bytes]) -> None:
        self._insert(key, frames)
        if self.directory is not None:
            self._write(key, frames)

    def _write(self, key: str, frames: list[bytes]) -> None:
        assert self.directory is not None
        path = self.directory / f"{key}.g711"
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(b"".join(frames))
            os.replace(tmp, path)
        except OSError:
            pass  # the disk copy is an optimisation; memory still serves

    def _insert(self, key: str, frames: list[bytes]) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= FRAME * len(old)
        size = FRAME * len(frames)
        if size > self.max_bytes:
            return
        self._items[key] = frames
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= FRAME * len(dropped)
