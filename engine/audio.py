"""Audio for the phone line: streaming resampling to 8 kHz and G.711 coding.

G.711 (ITU-T G.711) is done with lookup tables built once from the standard's
segment arithmetic: a 64 Ki-entry table from 16-bit linear to the code byte
and a 256-entry table back. The resampler is soxr's streaming mode, which keeps
its filter state across chunks, so chunked output equals whole-signal output.
"""

from __future__ import annotations

from typing import AsyncIterator

import numpy as np
import soxr

from media import SAMPLE_RATE as TELEPHONE_RATE

# -- G.711 --------------------------------------------------------------------------
_ULAW_BIAS = 0x84


def _build_ulaw_encode() -> np.ndarray:
    # G.711 μ-law on 14-bit magnitudes (the 16-bit input shifted right by 2).
    x = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(x), 8159) + 0x21
    seg = np.zeros_like(mag)
    for bound in (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF):
        seg += mag > bound
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0x0F)) ^ mask
    return code.astype(np.uint8)


def _build_ulaw_decode() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = ((u & 0x0F) << 3) + _ULAW_BIAS
    t = t << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _build_alaw_encode() -> np.ndarray:
    x = np.arange(-32768, 32768, dtype=np.int32) >> 3  # A-law works on 13 bits
    sign = np.where(x >= 0, 0x80, 0)
    mag = np.where(x >= 0, x, -x - 1)
    mag = np.minimum(mag, 0xFFF)
    seg = np.zeros_like(mag)
    for i, bound in enumerate((0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)):
        seg = np.where((mag > bound) & (seg == i), i + 1, seg)
    seg = np.minimum(seg, 7)
    mant = np.where(seg < 2, (mag >> 1) & 0x0F, (mag >> seg) & 0x0F)
    code = (sign | (seg << 4) | mant) ^ 0x55
    return code.astype(np.uint8)


def _build_alaw_decode() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, np.where(seg == 1, t + 0x108, (t + 0x108) << np.maximum(seg - 1, 0)))
    return np.where(a & 0x80, t, -t).astype(np.int16)


_ULAW_ENC = _build_ulaw_encode()
_ULAW_DEC = _build_ulaw_decode()
_ALAW_ENC = _build_alaw_encode()
_ALAW_DEC = _build_alaw_decode()
_ENC = {"PCMU": _ULAW_ENC, "PCMA": _ALAW_ENC}
LINE_CODECS = tuple(_ENC)  # the line formats LineEncoder writes
_DEC = {"PCMU": _ULAW_DEC, "PCMA": _ALAW_DEC}


def encode_g711(samples: np.ndarray, codec: str) -> bytes:
    """int16 samples → G.711 bytes ("PCMU" or "PCMA")."""
    pcm = np.asarray(samples, dtype=np.int16)
    return _ENC[codec][pcm.astype(np.int32) + 32768].tobytes()


def decode_g711(data: bytes, codec: str) -> np.ndarray:
    """G.711 bytes → int16 samples."""
    return _DEC[codec][np.frombuffer(data, dtype=np.uint8)]


def float_to_int16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def float_to_s16le(x: np.ndarray) -> bytes:
    """``float_to_int16(x)`` as little-endian bytes, in one scratch array (every HTTP API chunk is made so)."""
    y = np.clip(x, -1.0, 1.0)
    y *= 32767.0
    np.rint(y, out=y)
    return y.astype("<i2").tobytes()


# -- resampling ---------------------------------------------------------------------
class StreamingResampler:
    """Band-limited resampling of a stream, chunk by chunk, with state kept between chunks.

    Uses soxr's high-quality filter (passband to 91% of the output Nyquist,
    stopband attenuation over 100 dB), so nothing above 4 kHz folds into the
    telephone band. ``flush()`` returns the filter's tail at the end.
    """

    def __init__(self, in_rate: int, out_rate: int = TELEPHONE_RATE, quality: str = "HQ") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._passthrough = in_rate == out_rate
        self._stream = None if self._passthrough else soxr.ResampleStream(
            in_rate, out_rate, 1, dtype="float32", quality=quality)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(chunk, dtype=np.float32)
        if self._stream is None:
            return x
        return self._stream.resample_chunk(x, last=False)

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


async def encode_line(chunks: AsyncIterator[np.ndarray], in_rate: int, codec: str) -> AsyncIterator[bytes]:
    """An engine's chunks as 8 kHz G.711 pieces as they come, the resampler's tail last (empty ones skipped)."""
    encoder = LineEncoder(in_rate, codec)
    async for chunk in chunks:
        if data := encoder.encode(chunk):
            yield data
    if tail := encoder.finish():
        yield tail


class LineEncoder:
    """Engine chunks (float32 at the engine's rate) → G.711 bytes at 8 kHz, streaming."""

    def __init__(self, in_rate: int, codec: str) -> None:
        if codec not in _ENC:
            raise ValueError(f"unknown codec {codec!r}")
        self.codec = codec
        self._resampler = StreamingResampler(in_rate)

    def encode(self, chunk: np.ndarray) -> bytes:
        return encode_g711(float_to_int16(self._resampler.process(chunk)), self.codec)

    def finish(self) -> bytes:
        return encode_g711(float_to_int16(self._resampler.flush()), self.codec)
