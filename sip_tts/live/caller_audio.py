"""The caller's RTP as the application receives it: 20 ms frames, in order, gaps filled.

``CallerFrames`` is sans-IO: RTP packets (sequence, timestamp, G.711 payload) in, in arrival
order; 20 ms frames out, in timestamp order, each with the RTP timestamp of its first sample.
A packet that arrives out of order waits for the one before it for ``REORDER`` packets; a
packet still missing then is counted lost and its time is filled with silence, so the
application's clock stays the caller's. A late packet (its time already filled or sent) is
dropped and counted. ``FrameEncoder`` turns a frame into the format the application asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from engine.audio import decode_g711, encode_g711
from media import FRAME_SAMPLES, SILENCE

REORDER = 3  # packets that may arrive ahead of a missing one before it is declared lost
MAX_FILL = 50 * FRAME_SAMPLES  # a jump larger than 1 s in the timestamps is a new stream, not loss
FORMATS = ("pcm16_8k", "pcm16_16k", "mulaw")


@dataclass(frozen=True)
class Frame:
    timestamp: int  # RTP timestamp (8 kHz) of the frame's first sample
    payload: bytes  # 160 G.711 bytes in the call's codec
    filled: bool = False  # silence standing in for lost packets


def _newer(a: int, b: int) -> bool:
    """Sequence number ``a`` comes after ``b`` (16-bit, wrapping)."""
    return 0 < ((a - b) & 0xFFFF) < 0x8000


class CallerFrames:
    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.lost = 0  # frames filled with silence for packets that never came
        self.late = 0  # packets that came after their time was filled or sent (dropped)
        self._next_seq: int | None = None
        self._next_ts = 0  # timestamp of the next sample owed to the application
        self._ahead: dict[int, tuple[int, bytes]] = {}  # seq -> (timestamp, payload), waiting for a gap
        self._partial = b""  # samples not yet a whole frame (packets other than 20 ms)
        self._partial_ts = 0

    def feed(self, seq: int, timestamp: int, payload: bytes) -> list[Frame]:
        if self._next_seq is None:
            self._next_seq, self._next_ts, self._partial_ts = seq, timestamp, timestamp
        if seq != self._next_seq and not _newer(seq, self._next_seq):
            self.late += 1
            return []
        self._ahead[seq] = (timestamp, payload)
        out: list[Frame] = []
        while True:
            if self._next_seq in self._ahead:
                ts, data = self._ahead.pop(self._next_seq)
                self._emit(ts, data, out)
                self._next_seq = (self._next_seq + 1) & 0xFFFF
            elif len(self._ahead) > REORDER:
                self._next_seq = (self._next_seq + 1) & 0xFFFF  # lost: its time is filled by the next packet's
            else:
                return out

    def _emit(self, ts: int, data: bytes, out: list[Frame]) -> None:
        gap = (ts - self._next_ts) & 0xFFFFFFFF
        if 0 < gap <= MAX_FILL:
            self._fill(gap, out)
        elif gap and gap < 0x80000000:  # a new stream (or a long pause): start afresh at its timestamp
            self._partial, self._partial_ts = b"", ts
        elif gap:  # overlaps what was already filled: a late packet whose slot is gone
            self.late += 1
            return
        if not self._partial:
            self._partial_ts = ts
        self._partial += data
        self._next_ts = (ts + len(data)) & 0xFFFFFFFF
        self._cut(out, filled=False)

    def _fill(self, samples: int, out: list[Frame]) -> None:
        before = len(out)
        if not self._partial:
            self._partial_ts = self._next_ts
        self._partial += bytes([SILENCE[self.codec]]) * samples
        self._next_ts = (self._next_ts + samples) & 0xFFFFFFFF
        self._cut(out, filled=True)
        self.lost += len(out) - before

    def _cut(self, out: list[Frame], filled: bool) -> None:
        while len(self._partial) >= FRAME_SAMPLES:
            out.append(Frame(self._partial_ts, self._partial[:FRAME_SAMPLES], filled))
            self._partial = self._partial[FRAME_SAMPLES:]
            self._partial_ts = (self._partial_ts + FRAME_SAMPLES) & 0xFFFFFFFF


class FrameEncoder:
    """One 20 ms frame of the caller's G.711 in the application's format: ``pcm16_8k`` (320 bytes,
    16-bit little-endian), ``pcm16_16k`` (640 bytes, resampled, the resampler's state kept between
    frames) or ``mulaw`` (160 bytes)."""

    def __init__(self, codec: str, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"audio: one of {', '.join(FORMATS)}")
        self.codec, self.fmt = codec, fmt
        self._resampler = soxr.ResampleStream(8000, 16000, 1, dtype="int16", quality="MQ") if fmt == "pcm16_16k" else None
        self._held = np.zeros(0, dtype=np.int16)  # resampled samples not yet a whole frame

    def encode(self, payload: bytes) -> bytes:
        if self.fmt == "mulaw" and self.codec == "PCMU":
            return payload
        pcm = decode_g711(payload, self.codec)
        if self.fmt == "mulaw":
            return encode_g711(pcm, "PCMU")
        if self._resampler is None:
            return pcm.astype("<i2").tobytes()
        # The resampler holds back its filter delay at first: pad the first frames so every
        # frame is exactly 20 ms (the delay is then a constant few samples, not a short frame).
        self._held = np.concatenate([self._held, self._resampler.resample_chunk(pcm)])
        if len(self._held) < 2 * FRAME_SAMPLES:
            self._held = np.concatenate([np.zeros(2 * FRAME_SAMPLES - len(self._held), np.int16), self._held])
        frame, self._held = self._held[:2 * FRAME_SAMPLES], self._held[2 * FRAME_SAMPLES:]
        return frame.astype("<i2").tobytes()
