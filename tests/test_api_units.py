"""HTTP API pieces without sockets: the response encoders, and the calls-first engine gate."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import soundfile

from engine.base import VoiceSpec
from sip_tts.api.audio import Encoder
from sip_tts.api.priority import CallsFirst


def _speechlike(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))).astype(np.float32)


@pytest.mark.parametrize("fmt", ["wav", "pcm", "flac", "mp3", "opus", "mulaw", "alaw"])
@pytest.mark.parametrize("streamed", [True, False])
def test_encoders_decode_to_the_rate_and_length_given(fmt, streamed):
    x = _speechlike(2.0, 22050)
    rate = 8000 if fmt in ("mulaw", "alaw") else 24000
    enc = Encoder(fmt, 22050, rate, streamed=streamed and fmt != "flac")
    pieces = [enc.encode(x[i:i + 441]) for i in range(0, len(x), 441)] + [enc.finish()]
    body = b"".join(pieces) if enc.streamed else enc.whole(b"".join(pieces))
    if streamed and fmt not in ("flac",):
        # bytes came out while encoding, not only at the end (Ogg Opus: libsndfile writes a page about a second)
        assert sum(1 for p in pieces[:-1] if p) >= (2 if fmt == "opus" else 4)
    if fmt == "pcm":
        y, sr = np.frombuffer(body, "<i2") / 32768, rate
    elif fmt in ("mulaw", "alaw"):
        from engine.audio import decode_g711

        y, sr = decode_g711(body, "PCMU" if fmt == "mulaw" else "PCMA") / 32768, rate
    else:
        y, sr = soundfile.read(io.BytesIO(body))
    assert sr == rate
    assert abs(len(y) / sr - 2.0) < (0.15 if fmt == "mp3" else 0.03), len(y) / sr  # mp3: encoder delay + padding
    assert 0.1 < np.sqrt(np.mean(np.square(y))) < 0.3  # the signal, not silence or clipping


class _Engine:
    """A stand-in engine whose utterances last until released: the gate's ordering made visible."""

    name = "stand-in"
    sample_rate = 8000

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release: dict[str, asyncio.Event] = {}

    async def stream(self, text: str, voice: VoiceSpec, background: bool = False):
        self.started.append(text)
        ev = self.release.setdefault(text, asyncio.Event())
        yield np.zeros(80, dtype=np.float32)
        await ev.wait()
        yield np.zeros(8000, dtype=np.float32)


async def _drain(it) -> int:
    n = 0
    async for chunk in it:
        n += len(chunk)
    return n


def _read(it) -> asyncio.Future:
    """A stream read to its end in a task of its own (its result: the samples it had)."""
    return asyncio.ensure_future(_drain(it))


def test_callers_go_first_when_the_engine_is_saturated():
    async def run() -> None:
        inner, v = _Engine(), VoiceSpec()
        gate = CallsFirst(inner, capacity=2)
        api1 = _read(gate.api_stream("api-1", v))
        call1 = _read(gate.stream("call-1", v))
        await asyncio.sleep(0.01)
        api2 = _read(gate.api_stream("api-2", v))  # full (api-1 + call-1): waits
        await asyncio.sleep(0.01)
        assert inner.started == ["api-1", "call-1"] and gate.api_waiting == 1
        call2 = _read(gate.stream("call-2", v))  # a caller never waits for the API
        await asyncio.sleep(0.01)
        assert inner.started == ["api-1", "call-1", "call-2"]
        inner.release["api-1"].set()
        await api1
        await asyncio.sleep(0.01)
        assert "api-2" not in inner.started  # still full: call-1 and call-2
        inner.release["call-1"].set()
        await call1
        await asyncio.sleep(0.01)
        assert inner.started[-1] == "api-2" and gate.api_waiting == 0
        for name in ("call-2", "api-2"):
            inner.release[name].set()
        assert await api2 == 8080 and await call2 == 8080
        assert gate.api_active == 0 and gate.calls_active == 0

    asyncio.run(run())


def test_a_cancelled_api_stream_frees_its_slot_and_a_waiting_one_gives_up_its_place():
    async def run() -> None:
        inner = _Engine()
        gate = CallsFirst(inner, capacity=1)
        v = VoiceSpec()
        a = _read(gate.api_stream("a", v))
        await asyncio.sleep(0.01)
        b = _read(gate.api_stream("b", v))
        c = _read(gate.api_stream("c", v))
        await asyncio.sleep(0.01)
        b.cancel()  # gone while waiting
        a.cancel()  # gone mid-stream: its engine stream is closed and the slot handed on
        await asyncio.sleep(0.01)
        assert inner.started == ["a", "c"] and gate.api_active == 1 and gate.api_waiting == 0
        inner.release["c"].set()
        assert await c == 8080 and gate.api_active == 0

    asyncio.run(run())


def test_api_streams_are_paced_while_calls_are_in_progress():
    class Fast:
        name, sample_rate = "fast", 8000

        async def stream(self, text, voice, background=False):
            for _ in range(40):  # 4 s of audio at once
                yield np.zeros(800, dtype=np.float32)

    async def run(calls: int) -> float:
        gate = CallsFirst(Fast(), capacity=4)
        gate.pace_with_calls, gate.live_calls = 4.0, lambda: calls
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await _drain(gate.api_stream("x", VoiceSpec())) == 32000
        return loop.time() - t0

    assert asyncio.run(run(0)) < 0.3  # no calls: as fast as the engine
    assert 0.6 < asyncio.run(run(3)) < 2.0  # calls: (4 s - the first second) / 4x real time = 0.75 s


def test_a_long_api_text_goes_in_pieces_and_a_caller_gets_in_between():
    async def run() -> None:
        inner = _Engine()
        gate = CallsFirst(inner, capacity=1, split_chars=60)
        text = "First sentence is here. Second one follows it. Third is the last one of these."
        assert gate.parts(text) == ["First sentence is here. Second one follows it.", "Third is the last one of these."]
        assert all(len(p) <= 60 for p in gate.parts("word " * 100)) and gate.parts("short") == ["short"]
        api = _read(gate.api_stream(text, VoiceSpec()))
        await asyncio.sleep(0.01)
        call = _read(gate.stream("call", VoiceSpec()))  # arrives during the first piece
        await asyncio.sleep(0.01)
        inner.release[gate.parts(text)[0]].set()
        await asyncio.sleep(0.01)
        assert inner.started == [gate.parts(text)[0], "call"]  # the caller before the API's next piece
        inner.release["call"].set()
        await call
        await asyncio.sleep(0.01)
        inner.release[gate.parts(text)[1]].set()
        assert await api == 2 * 8080 and inner.started[-1] == gate.parts(text)[1]

    asyncio.run(run())


def test_s16le_bytes_are_float_to_int16s():
    """The API's (and the engine process's S16LE) conversion: the same samples as float_to_int16, rounding and
    clipping included."""
    from engine.audio import float_to_int16, float_to_s16le

    rng = np.random.default_rng(7)
    ties = np.array([0.5, 1.5, -0.5, 2.5, -2.5], np.float32) / 32767  # round half to even, as numpy's round
    for x in (rng.uniform(-1.5, 1.5, 48000).astype(np.float32), rng.uniform(-1.5, 1.5, 999), ties,
              np.zeros(0, np.float32)):
        assert float_to_s16le(x) == float_to_int16(x).astype("<i2").tobytes()
    assert np.frombuffer(float_to_s16le(np.array([2.0, -2.0], np.float32)), "<i2").tolist() == [32767, -32767]
