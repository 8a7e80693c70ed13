"""An engine in its own process (engine/process.py): real child processes, the embedded espeak engine."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest

from engine.base import EngineError, VoiceSpec
from engine.espeak import EspeakEngine
from engine.process import EngineProcess

VOICE = VoiceSpec("default", (("voice", "en-us"), ("rate", 175)))
SR = 22050  # espeak-ng's rate; the process learns it from the engine
TEXT = "Thank you for calling. Your appointment is confirmed for Tuesday."


def espeak_process(**kw) -> EngineProcess:
    return EngineProcess("espeak", 0, "engine.espeak:EspeakEngine",
                         kwargs={"default_voice": "en-us"}, **kw)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_speech_through_the_process_matches_in_process():
    async def main():
        local = EspeakEngine(default_voice="en-us")
        await local.start()
        here = np.concatenate([c async for c in local.stream(TEXT, VOICE)])
        await local.close()
        remote = espeak_process()
        await remote.start()
        chunks = [c async for c in remote.stream(TEXT, VOICE)]
        # the child reports its stats every half second: wait for the report that covers this
        # stream (a deadline, not a fixed sleep, so a loaded host is slower but not a failure)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while remote.stats.audio_seconds < 0.95 * sum(len(c) for c in chunks) / SR and loop.time() < deadline:
            await asyncio.sleep(0.05)
        stats = remote.stats
        rate = remote.sample_rate
        await remote.close()
        return here, chunks, stats, rate

    here, chunks, stats, rate = asyncio.run(main())
    assert rate == SR
    there = np.concatenate(chunks)
    assert len(chunks) > 10  # streamed, not one blob
    assert there.dtype == np.float32
    # espeak-ng is not sample-identical between renderings: same length within 5 %, same loudness within 1 dB
    assert abs(len(there) - len(here)) <= 0.05 * len(here)
    assert abs(20 * np.log10(rms(there) / rms(here))) < 1.0
    assert stats.audio_seconds == pytest.approx(len(there) / SR, rel=0.05)


def test_cancel_stops_the_stream_and_the_next_one_plays():
    async def main():
        eng = espeak_process()
        await eng.start()
        stream = eng.stream(TEXT * 5, VOICE)
        first = await stream.__anext__()
        await stream.aclose()  # the caller hung up
        again = np.concatenate([c async for c in eng.stream("Goodbye.", VOICE)])
        await eng.close()
        return first, again

    first, again = asyncio.run(main())
    assert first.size > 0 and again.size > 0.3 * SR and rms(again) > 0.01


def test_a_killed_engine_fails_its_streams_and_comes_back():
    async def main():
        eng = espeak_process(restart_delay=0.2)
        await eng.start()
        pid = eng.pid
        stream = eng.stream(TEXT * 20, VOICE)
        await stream.__anext__()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineError, match="process exited"):
            async for _ in stream:
                pass
        for _ in range(600):  # restarted in the background (30 s: a loaded host is slow, not broken)
            if eng.pid not in (None, pid):
                break
            await asyncio.sleep(0.05)
        after = np.concatenate([c async for c in eng.stream("Still here.", VOICE)])
        restarts = eng.restarts
        await eng.close()
        return after, restarts

    after, restarts = asyncio.run(main())
    assert restarts == 1 and rms(after) > 0.01


def test_an_engine_that_cannot_load_is_named_and_not_retried_at_once():
    async def main():
        eng = EngineProcess("broken", 24000, "engine.process:_no_such_engine", restart_delay=0.6)
        loop = asyncio.get_running_loop()
        with pytest.raises(EngineError, match="engine broken: AttributeError"):
            await eng.start()
        failed = loop.time()
        with pytest.raises(EngineError):
            await eng.start()  # a call arriving right after: waits out the delay, then tries again
        waited = loop.time() - failed
        available = eng.available
        await eng.close()
        return waited, available

    waited, available = asyncio.run(main())
    assert waited >= 0.6 and not available


def test_line_audio_is_encoded_in_the_child_as_the_server_would():
    """stream_line (resampled and G.711-encoded in the child) == the server's own LineEncoder
    over the same engine's chunks: same length, same loudness, and far fewer bytes on the pipe."""
    from engine.audio import LineEncoder, decode_g711
    from engine.prompt_cache import render_speech

    async def main():
        remote = espeak_process()
        await remote.start()
        pushed: list[bytes] = []
        line = await render_speech(remote, VOICE, TEXT, "PCMA", push=pushed.append)  # takes the child's path
        floats = np.concatenate([c async for c in remote.stream(TEXT, VOICE)])
        with pytest.raises(ValueError):
            [_ async for _ in remote.stream_line(TEXT, VOICE, "G729")]
        await remote.close()
        enc = LineEncoder(SR, "PCMA")
        here = enc.encode(floats) + enc.finish()
        return line, pushed, here, floats

    line, pushed, here, floats = asyncio.run(main())
    assert len(pushed) > 5 and b"".join(pushed) == line  # streamed in pieces
    assert abs(len(line) - len(here)) <= 0.05 * len(here)  # espeak varies a little between renderings
    a, b = decode_g711(line, "PCMA"), decode_g711(here, "PCMA")
    assert abs(20 * np.log10(rms(a) / rms(b))) < 1.0
    assert len(line) * 10 < floats.nbytes  # 1 byte per 8 kHz sample vs 4 per 22.05 kHz sample


def test_a_streams_first_chunk_is_stamped_on_arrival_for_its_reader():
    """FIRST_ARRIVAL: when the first chunk reached this process (before the loop handed it on), set for the task
    reading the stream; the HTTP API reports it (X-First-Audio-Arrived-Ms)."""
    import time

    from engine.process import FIRST_ARRIVAL

    async def run() -> None:
        eng = EngineProcess("espeak", 22050, "engine.espeak:EspeakEngine")
        await eng.start()
        try:
            t0 = time.perf_counter()
            chunks = eng.stream("Stamped on arrival.", VoiceSpec())
            await chunks.__anext__()
            got = time.perf_counter()
            arrived = FIRST_ARRIVAL.get()
            assert arrived is not None and t0 < arrived <= got
            async for _ in chunks:
                pass
            assert eng._first_at == {}  # nothing kept once the stream is done
        finally:
            await eng.close()

    asyncio.run(run())


class Sweep:
    """A deterministic engine for the child (espeak-ng is not sample-identical between renderings): a rising
    tone past full scale in 0.1 s chunks, so rounding and clipping are both compared."""

    name = "sweep"
    sample_rate = 24000

    def __init__(self) -> None:
        from engine.base import EngineStats

        self.stats = EngineStats()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def queue_depth(self) -> int:
        return 0

    async def stream(self, text: str, voice: VoiceSpec, background: bool = False):
        t = np.arange(24000) / 24000
        x = (1.3 * t * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for i in range(0, len(x), 2400):
            yield x[i:i + 2400]


def test_stream_s16_is_the_float_stream_as_16_bit_made_in_the_child():
    """The HTTP API's pcm/wav at the engine's rate: converted in the engine's process, the same samples."""
    from engine.audio import float_to_int16

    async def run() -> tuple[list, list]:
        eng = EngineProcess("sweep", 24000, "tests.test_engine_process:Sweep")
        await eng.start()
        try:
            floats = [c async for c in eng.stream("any", VoiceSpec())]
            s16 = [c async for c in eng.stream_s16("any", VoiceSpec())]
        finally:
            await eng.close()
        return floats, s16

    floats, s16 = asyncio.run(run())
    assert len(s16) == len(floats) == 10 and all(isinstance(c, bytes) for c in s16)
    assert b"".join(s16) == float_to_int16(np.concatenate(floats)).astype("<i2").tobytes()
    assert max(np.frombuffer(b"".join(s16), "<i2")) == 32767  # clipped, not wrapped
