"""Response audio: the engine's float32 chunks resampled and encoded, chunk by chunk.

Every format can be streamed: the bytes a chunk adds go out as they exist.
WAV streams with "unknown length" sizes (0xFFFFFFFF, as OpenAI streams it);
a whole (not streamed) response gets the real sizes. FLAC, MP3 and Ogg Opus
are encoded by libsndfile (through soundfile); when streamed, the header
fields libsndfile rewrites at the end (FLAC's total samples, MP3's Xing tag)
stay at their "unknown" values, which decoders accept. AAC has no maintained
encoder among our libraries, so it is refused.
"""

from __future__ import annotations

import struct

import numpy as np
import soundfile

from engine.audio import StreamingResampler, encode_g711, float_to_int16, float_to_s16le

CONTENT_TYPES = {
    "wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg",
    "mulaw": "audio/basic", "alaw": "audio/x-alaw-basic",
}
OPENAI_FORMATS = ("mp3", "opus", "flac", "wav", "pcm")  # offered; OpenAI's list also has aac
_SOUNDFILE = {"flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS")}


class _Sink:
    """A seekable file for libsndfile to write into; ``take()`` returns what was appended since the last call."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pos = 0
        self.sent = 0

    def write(self, data: bytes) -> int:
        end = self.pos + len(data)
        if end > len(self.buf):
            self.buf.extend(b"\0" * (end - len(self.buf)))
        self.buf[self.pos:end] = data
        self.pos = end
        return len(data)

    def read(self, n: int = -1) -> bytes:
        end = len(self.buf) if n < 0 else min(len(self.buf), self.pos + n)
        out = bytes(self.buf[self.pos:end])
        self.pos = end
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else (self.pos + offset if whence == 1 else len(self.buf) + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def take(self) -> bytes:
        out = bytes(self.buf[self.sent:])
        self.sent = len(self.buf)
        return out


def wav_header(rate: int, data_bytes: int | None, width: int = 2, fmt: int = 1) -> bytes:
    """RIFF/WAVE header for mono audio; ``data_bytes`` None: streamed, sizes 0xFFFFFFFF."""
    riff = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    data = 0xFFFFFFFF if data_bytes is None else data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, fmt, 1, rate, rate * width, width, width * 8) +
            b"data" + struct.pack("<I", data))


class Encoder:
    """float32 chunks at the engine's rate → ``fmt`` at ``rate``; ``streamed``: bytes as they exist. pcm and wav at
    the engine's own rate also take 16-bit little-endian bytes (``engine.process.S16LE``): they pass through."""

    def __init__(self, fmt: str, in_rate: int, rate: int, streamed: bool) -> None:
        self.fmt = fmt
        self.rate = rate
        self.streamed = streamed
        self.content_type = CONTENT_TYPES[fmt]
        self._resampler = StreamingResampler(in_rate, rate)
        self._pcm_bytes = 0
        self._sink: _Sink | None = None
        self._file: soundfile.SoundFile | None = None
        self._started = False
        if fmt in _SOUNDFILE:
            major, sub = _SOUNDFILE[fmt]
            self._sink = _Sink()
            # MP3 at a constant bit rate: a streamed file has no Xing header (written last, at the start), and
            # readers then take its length from its size and first frame's rate (VBR: a quarter was read)
            extra = {"bitrate_mode": "CONSTANT", "compression_level": 0.5} if fmt == "mp3" else {}
            self._file = soundfile.SoundFile(self._sink, "w", samplerate=rate, channels=1, format=major, subtype=sub,
                                             **extra)

    def _bytes(self, x: np.ndarray) -> bytes:
        if self._file is not None:
            if len(x):
                self._file.write(x)
            return self._sink.take() if self.streamed else b""  # type: ignore[union-attr]
        if self.fmt == "mulaw":
            return encode_g711(float_to_int16(x), "PCMU")
        if self.fmt == "alaw":
            return encode_g711(float_to_int16(x), "PCMA")
        return self._pcm(float_to_s16le(x))

    def _pcm(self, data: bytes) -> bytes:
        self._pcm_bytes += len(data)
        if self.fmt == "wav" and self.streamed and not self._started:
            data = wav_header(self.rate, None) + data
        self._started = True
        return data

    def encode(self, chunk: np.ndarray | bytes) -> bytes:
        if isinstance(chunk, bytes):  # 16-bit already (pcm or wav at the engine's rate: see speech._S16)
            return self._pcm(chunk)
        return self._bytes(self._resampler.process(chunk))

    def finish(self) -> bytes:
        """The resampler's tail and the encoder's last bytes (a whole file: the file's header too, sizes filled)."""
        tail = self._resampler.flush()
        out = self._bytes(tail) if len(tail) or (self.fmt == "wav" and not self._started) else b""
        if self._file is not None:
            self._file.close()
            return self._sink.take() if self.streamed else bytes(self._sink.buf)  # type: ignore[union-attr]
        return out

    def whole(self, body: bytes) -> bytes:
        """The body of a response that was not streamed (WAV: header with the real sizes in front)."""
        if self.fmt == "wav":
            return wav_header(self.rate, len(body)) + body
        return body
