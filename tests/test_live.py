"""sip_tts/live without sockets: clauses, the caller's frames, the commands, and a session run
against the real espeak engine and a real frame queue popped as the pacer pops it."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from engine.audio import decode_g711, encode_g711
from engine.base import VoiceSpec
from engine.espeak import EspeakEngine
from sip_tts.api.priority import CallsFirst
from sip_tts.live.caller_audio import CallerFrames, FrameEncoder
from sip_tts.live.clauses import ClauseBuffer
from sip_tts.live.protocol import BadCommand, audio_message, parse_audio_message, parse_command
from sip_tts.live.session import LiveSession, Outbox
from telephony.call import CallHandle, CallInfo
from telephony.rtp.dtmf import DtmfDigit
from telephony.rtp.pacer import FrameQueue


# -- clauses ----------------------------------------------------------------------------------
def test_clauses_start_at_the_first_boundary_and_wait_for_the_next_fragment():
    b = ClauseBuffer()
    for piece in ("Sure", ",", " I can", " help"):
        b.feed(piece)
    assert b.ready() == "Sure,"  # the comma had a space after it
    b.feed(" with that. The")
    assert b.ready() == "I can help with that."
    assert b.ready() is None and b.text == " The"
    b.feed(" price is 3.")  # "3." may become "3.5": not a boundary yet
    assert b.ready() is None
    b.feed("5 dollars")
    assert b.ready() is None
    assert b.flush() == "The price is 3.5 dollars"
    assert b.flush() is None


def test_clauses_take_every_complete_clause_at_once_and_cut_a_run_without_punctuation():
    b = ClauseBuffer()
    b.feed("One. Two, three; four: five! Six")
    assert b.ready() == "One. Two, three; four: five!"
    b.clear()
    b.feed(" ".join(["word"] * 31) + " ")
    cut = b.ready()
    assert cut is not None and len(cut.split()) == 31 and b.text == ""


# -- the caller's frames ------------------------------------------------------------------------
def _packets(n: int, ptime_samples: int = 160, seq0: int = 65530, ts0: int = 2**32 - 400):
    data = bytes(range(256)) * 200
    for k in range(n):
        yield (seq0 + k) & 0xFFFF, (ts0 + k * ptime_samples) & 0xFFFFFFFF, data[k * ptime_samples:(k + 1) * ptime_samples]


def test_caller_frames_in_order_across_wraparound():
    f = CallerFrames("PCMU")
    out = [fr for p in _packets(10) for fr in f.feed(*p)]
    assert [fr.timestamp for fr in out] == [(2**32 - 400 + 160 * k) & 0xFFFFFFFF for k in range(10)]
    assert not any(fr.filled for fr in out) and f.lost == 0


def test_reordered_packets_are_put_back_in_order_and_a_lost_one_is_filled():
    pk = list(_packets(12))
    order = [0, 1, 3, 2, 4, 6, 7, 8, 9, 10, 11]  # 2 and 3 swapped, 5 never comes
    f = CallerFrames("PCMU")
    out = [fr for i in order for fr in f.feed(*pk[i])]
    ts = [fr.timestamp for fr in out]
    assert ts == sorted(ts, key=lambda t: (t - pk[0][1]) & 0xFFFFFFFF)
    assert len(out) == 12 and f.lost == 1
    filled = [fr for fr in out if fr.filled]
    assert len(filled) == 1 and filled[0].timestamp == pk[5][1] and filled[0].payload == b"\xff" * 160
    assert out[2].payload == pk[2][2]
    f.feed(*pk[5])  # far too late now
    assert f.late == 1


def test_thirty_ms_packets_become_twenty_ms_frames():
    f = CallerFrames("PCMA")
    out = [fr for p in _packets(4, ptime_samples=240, seq0=1, ts0=1000) for fr in f.feed(*p)]
    assert [fr.timestamp for fr in out] == [1000, 1160, 1320, 1480, 1640, 1800]
    assert b"".join(fr.payload for fr in out) == b"".join(p[2] for p in _packets(4, 240, 1, 1000))


def test_frame_encoder_formats():
    t = np.arange(160 * 10) / 8000
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    alaw = encode_g711(pcm, "PCMA")
    frames = [alaw[i:i + 160] for i in range(0, len(alaw), 160)]
    assert FrameEncoder("PCMA", "pcm16_8k").encode(frames[0]) == decode_g711(frames[0], "PCMA").astype("<i2").tobytes()
    ulaw = FrameEncoder("PCMA", "mulaw").encode(frames[0])
    assert len(ulaw) == 160 and np.corrcoef(decode_g711(ulaw, "PCMU"), pcm[:160])[0, 1] > 0.99
    enc = FrameEncoder("PCMA", "pcm16_16k")
    wide = b"".join(enc.encode(fr) for fr in frames)
    assert len(wide) == 640 * 10
    x = np.frombuffer(wide, "<i2").astype(float)[640:]  # after the resampler's start
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * 16000 / len(x) - 440) < 20
    with pytest.raises(ValueError):
        FrameEncoder("PCMU", "opus")


def test_audio_message_header_round_trip():
    msg = audio_message(70000, 2**32 - 1, True, b"\x01" * 320)
    assert len(msg) == 8 + 320
    assert parse_audio_message(msg) == (70000 & 0xFFFF, 2**32 - 1, True, b"\x01" * 320)


# -- commands ----------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, field", [
    ("not json", None), ("[1]", None), ('{"text": 5}', "text"), ('{"clear": true, "colour": 1}', "colour"),
    ('{"audio": "opus"}', "audio"), ("{}", None), ('{"text": "' + "x" * 5000 + '"}', "text")])
def test_bad_commands_name_the_field(raw, field):
    with pytest.raises(BadCommand) as err:
        parse_command(raw)
    assert err.value.field == field


def test_frame_queue_counts_and_watch():
    q = FrameQueue(0xFF)
    fired = []
    q.push(b"\x01" * 400)  # two frames and a partial
    q.pad_frame()
    assert q.queued == 3
    q.watch(2, lambda: fired.append(q.sent))
    q.pop()
    assert not fired
    q.pop()
    assert fired == [2]
    q.flush()
    assert q.dropped == 1 and q.pop() is None and q.starved == 1


# -- a session -----------------------------------------------------------------------------------
class _Channel:
    """An in-memory channel: what the session sends is kept; nothing comes in."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.frames: list[bytes] = []

    async def send_text(self, data: str) -> None:
        self.events.append(json.loads(data))

    async def send_bytes(self, data: bytes) -> None:
        self.frames.append(data)

    async def messages(self):
        await asyncio.Event().wait()
        yield ""

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


def with_engine(body):
    """Run ``body(engine)`` on a fresh loop with the real espeak engine, as the app wraps it."""
    async def main():
        e = EspeakEngine()
        await e.start()
        try:
            await asyncio.wait_for(body(CallsFirst(e, 1, split_chars=300)), 30)
        finally:
            await e.close()

    asyncio.run(main())


def _session(engine, hung: list | None = None) -> tuple[LiveSession, FrameQueue, _Channel]:
    q = FrameQueue(0xFF)
    handle = CallHandle(CallInfo("c1", "5000", "555", "PCMU"), q)
    session = LiveSession(handle, engine, VoiceSpec(), lambda n: {"default": VoiceSpec()}[n],
                          lambda reason: (hung if hung is not None else []).append(reason))
    ch = _Channel()
    session.outbox = Outbox(ch)
    asyncio.ensure_future(session.outbox.run())
    return session, q, ch


async def _pace(q: FrameQueue, frames: int) -> list[bytes | None]:
    """Pop as the pacer does (fast: time is not what is tested here)."""
    out = []
    for _ in range(frames):
        out.append(q.pop())
        await asyncio.sleep(0.001)
    return out


def _loud(frame: bytes | None) -> bool:
    return frame is not None and float(np.abs(decode_g711(frame, "PCMU").astype(float)).mean()) > 100


def test_fragments_become_a_running_utterance_with_marks_and_events():
    with_engine(_test_fragments_become_a_running_utterance_with_marks_and_events)


async def _test_fragments_become_a_running_utterance_with_marks_and_events(engine):
    session, q, ch = _session(engine)
    session.text("Hello")
    session.text(" there")
    await asyncio.sleep(0.05)
    assert q.pending == 0 and session._speaker is None  # no clause is complete: nothing is said yet
    session.text(", how are you today? I am")
    session.mark("first")
    session.text(" fine", flush=True)
    popped = await _pace(q, 400)
    kinds = [e["event"] for e in ch.events]
    assert kinds == ["speaking", "mark", "idle"], ch.events
    assert ch.events[0]["latency_ms"] >= 0 and ch.events[2]["underrun_frames"] == 0
    assert session.utterances == 3  # "Hello there,", "how are you today?" (the mark ended it), "I am fine"
    first_loud = next(i for i, f in enumerate(popped) if _loud(f))
    last_loud = max(i for i, f in enumerate(popped) if _loud(f))
    assert all(f is not None for f in popped[first_loud:last_loud])  # no slot without audio in between
    assert q.queued == q.sent


def test_clear_empties_the_queue_at_once_and_drops_text_and_marks():
    with_engine(_test_clear_empties_the_queue_at_once_and_drops_text_and_marks)


async def _test_clear_empties_the_queue_at_once_and_drops_text_and_marks(engine):
    session, q, ch = _session(engine)
    session.text("This is a long sentence that keeps going for quite a while, so that it is still "
                 "playing when the application decides to stop it.", flush=True)
    session.mark("never")
    session.text("More text without an end")
    await _pace(q, 20)
    assert q.pending > 20
    session.clear()
    assert q.pending == 0 and q.pop() is None  # the very next slot is silence
    assert session.clauses.text == "" and not session._segments
    await asyncio.sleep(0.05)
    assert q.pending == 0  # no synthesis went on writing
    assert [e["event"] for e in ch.events] == ["speaking", "mark", "cleared"]
    assert ch.events[1] == {"event": "mark", "name": "never", "cleared": True} and ch.events[2]["dropped_ms"] > 400
    assert session.tasks() == 0
    session.text("After the clear.", flush=True)
    await _pace(q, 150)
    assert [e["event"] for e in ch.events][3:] == ["speaking", "idle"]


def test_hangup_after_the_queued_audio():
    with_engine(_test_hangup_after_the_queued_audio)


async def _test_hangup_after_the_queued_audio(engine):
    hung: list[str] = []
    session, q, ch = _session(engine, hung)
    session.command(parse_command('{"text": "Goodbye.", "hangup": true}'))
    await _pace(q, 10)
    assert hung == []
    await _pace(q, 150)
    assert hung == ["app-hangup"]
    again, q2, ch2 = _session(engine, hung)
    again.command(parse_command('{"text": "Goodbye again.", "hangup": true, "mark": "bye"}'))
    again.clear()  # the audio goes, the decision to hang up stays
    assert hung == ["app-hangup"] * 2 and q2.pending == 0
    await asyncio.sleep(0.01)
    assert [e["event"] for e in ch2.events] == ["mark", "cleared"] and ch2.events[0]["cleared"]


def test_unknown_voice_and_digits_and_the_outbox_bound():
    with_engine(_test_unknown_voice_and_digits_and_the_outbox_bound)


async def _test_unknown_voice_and_digits_and_the_outbox_bound(engine):
    session, q, ch = _session(engine)
    with pytest.raises(BadCommand) as err:
        session.command(parse_command('{"text": "x", "voice": "nobody"}'))
    assert err.value.field == "voice"
    box = Outbox(ch, max_events=2, max_frames=3)
    for k in range(5):
        box.frame(bytes([k]))
    assert list(box.frames) == [b"\x02", b"\x03", b"\x04"] and box.frames_dropped == 2
    for _ in range(3):
        box.event("{}")
    assert box.overflow
    assert await asyncio.wait_for(box.run(), 1) is None  # the writer gives up on a client that fell behind
    session.handle.digit_arrived(DtmfDigit("7", 100, "rfc4733"))
    forward = asyncio.ensure_future(session._forward_digits())
    await asyncio.sleep(0.01)
    forward.cancel()
    assert ch.events[-1] == {"event": "dtmf", "digit": "7"}


def test_waiting_clauses_merge_and_synthesis_follows_playback():
    with_engine(_merging)


async def _merging(engine):
    session, q, ch = _session(engine)
    session.text("This first sentence is long enough to keep the caller busy for a few seconds at least. ")
    for k in range(6):  # a model writing faster than speech: clauses pile up while the first plays
        session.text(f"Then clause number {k} arrives. ")
    await asyncio.sleep(0.1)
    assert q.pending < 400  # not the whole reply queued: about a second and an utterance ahead of the wire
    await _pace(q, 1500)
    assert [e["event"] for e in ch.events] == ["speaking", "idle"] and ch.events[1]["underrun_frames"] == 0
    assert session.utterances <= 3, session.utterances  # seven clauses, merged while they waited
    for _ in range(8):
        session.command(parse_command(json.dumps({"text": "word " * 800})))  # 32,000 characters: accepted
    with pytest.raises(BadCommand) as err:
        session.command(parse_command(json.dumps({"text": "word " * 800})))
    assert err.value.field == "text" and "waiting to be spoken" in str(err.value)
    session.clear()
    before = session.utterances
    session.text("One. Two. Three. Four.", flush=True)
    await _pace(q, 200)
    assert session.utterances == before + 1


def test_a_failed_synthesis_is_an_error_event_and_the_call_goes_on():
    with_engine(_failing)


async def _failing(engine):
    session, q, ch = _session(engine)
    broken = VoiceSpec("broken", (("voice", "zz-no-such-voice"),))
    session._voices = lambda n: {"default": VoiceSpec(), "broken": broken}[n]
    session.command(parse_command('{"voice": "broken", "text": "Not said.", "flush": true}'))
    session.command(parse_command('{"voice": "default", "text": "Said.", "flush": true}'))
    await _pace(q, 120)
    assert [e["event"] for e in ch.events] == ["error", "speaking", "idle"], ch.events
    assert ch.events[0] == {"event": "error", "message": "synthesis failed", "field": "text"}
    assert session.tasks() == 0


def test_the_call_table_hands_the_callers_audio_only_while_tapped():
    from telephony.calls import CallerAudio
    from tests.test_calls import Harness, rtp

    h = Harness()
    call, _ = h.answered_call()
    h.table.rtp_received("call-1", rtp(1, 160, payload=b"\x11" * 160), ("10.0.0.5", 40000), 0.2)
    assert h.table.actions() == []  # nobody listens: no action per packet
    call.tap_audio = True  # (what CallHandle.listen asks for through MediaIO)
    h.table.rtp_received("call-1", rtp(2, 320, payload=b"\x22" * 160), ("10.0.0.5", 40000), 0.22)
    h.table.rtp_received("call-1", rtp(3, 480, pt=101, payload=bytes([5, 10, 0, 160])), ("10.0.0.5", 40000), 0.24)
    got = h.table.actions()
    assert [type(a) for a in got] == [CallerAudio]  # the telephone-event packet is not audio
    assert (got[0].sequence, got[0].timestamp, got[0].payload) == (2, 320, b"\x22" * 160)
