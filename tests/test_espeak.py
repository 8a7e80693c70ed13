"""The embedded engine for real: espeak-ng from the espeakng-loader wheel."""

import asyncio

import numpy as np

from engine.base import VoiceSpec
from engine.espeak import EspeakEngine


async def _collect(engine, text, voice=VoiceSpec()):
    chunks = [c async for c in engine.stream(text, voice)]
    return chunks


def test_streams_speech_in_chunks():
    async def main():
        engine = EspeakEngine()
        await engine.start()
        chunks = await _collect(engine, "Thank you for calling. Please hold the line.")
        await engine.close()
        return engine.sample_rate, chunks

    rate, chunks = asyncio.run(main())
    audio = np.concatenate(chunks)
    assert rate == 22050
    assert len(chunks) > 10  # streamed, not one blob
    assert all(c.dtype == np.float32 for c in chunks)
    assert 1.5 < len(audio) / rate < 5.0
    assert np.sqrt(np.mean(audio ** 2)) > 0.02  # real speech, not silence


def test_rate_setting_changes_duration():
    async def main():
        engine = EspeakEngine()
        slow = np.concatenate(await _collect(engine, "one two three four five", VoiceSpec("s", (("rate", 100),))))
        fast = np.concatenate(await _collect(engine, "one two three four five", VoiceSpec("f", (("rate", 300),))))
        await engine.close()
        return slow, fast

    slow, fast = asyncio.run(main())
    assert len(slow) > 1.8 * len(fast)


def test_cancel_stops_synthesis_and_the_next_job_runs():
    async def main():
        engine = EspeakEngine()
        await engine.start()
        long_text = "This is a very long announcement. " * 40
        got = 0
        stream = engine.stream(long_text, VoiceSpec())
        async for chunk in stream:
            got += len(chunk)
            if got > engine.sample_rate // 2:
                break
        await stream.aclose()
        after = await _collect(engine, "Next.")
        await engine.close()
        return got, engine.sample_rate, after

    got, rate, after = asyncio.run(main())
    assert got < rate  # we stopped after about half a second
    assert len(np.concatenate(after)) < 2 * rate  # the next job is its own short utterance


def test_unknown_voice_is_a_clear_error():
    async def main():
        engine = EspeakEngine()
        try:
            await _collect(engine, "hi", VoiceSpec("x", (("voice", "no-such-voice"),)))
        finally:
            await engine.close()

    try:
        asyncio.run(main())
    except Exception as exc:  # EngineError
        assert "no-such-voice" in str(exc)
    else:
        raise AssertionError("expected an error")
