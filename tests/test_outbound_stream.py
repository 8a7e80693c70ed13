"""A placed call's stream without sockets: its progress kept for the session and replayed to an
application that attaches later, its outcome kept for a stream opened after it failed, and the
session moved to the call's audio when the answer picks another codec (real espeak engine, real
frame queues popped as the pacer pops them)."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from engine.audio import decode_g711
from engine.base import VoiceSpec
from sip_tts.live.registry import LiveCalls
from telephony.call import CallHandle, CallInfo
from telephony.rtp.pacer import FrameQueue

from .test_live import _Channel, _pace, with_engine


class _Call:
    """What the registry reads of a call of the table."""

    def __init__(self, handle: CallHandle) -> None:
        self.info, self.queue, self.ended = handle.info, handle.queue, False


def _handle(codec: str) -> CallHandle:
    return CallHandle(CallInfo("out-1", "callee", "sip-tts", codec), FrameQueue(0xFF if codec == "PCMU" else 0xD5))


def _registry(calls: dict) -> LiveCalls:
    return LiveCalls(lambda: calls, lambda call_id, reason: True)


def _open(reg: LiveCalls, handle: CallHandle, engine, owner: object):
    return reg.open(handle, engine, VoiceSpec(), lambda n: VoiceSpec(), owner=owner)


def test_progress_before_the_session_is_replayed_after_start():
    async def main():
        first = _handle("PCMU")
        reg = _registry({"out-1": _Call(first)})
        reg.expect("out-1")
        reg.progress("out-1", "trying", sip_status=100, reason="Trying")
        waiting = asyncio.ensure_future(reg.session_soon("out-1"))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # the stream waits for the first step's session
        session = _open(reg, first, None, "run")
        assert await waiting is session
        reg.progress("out-1", "ringing", sip_status=180, reason="Ringing")
        ch = _Channel()
        serving = asyncio.ensure_future(session.serve(ch))
        await asyncio.sleep(0.01)
        reg.progress("out-1", "answered", sip_status=200, reason="OK", codec="PCMU")
        await asyncio.sleep(0.01)
        assert [e["event"] for e in ch.events] == ["start", "trying", "ringing", "answered"]
        assert ch.events[2] == {"event": "ringing", "sip_status": 180, "reason": "Ringing"}
        assert session.answered_at is not None
        first.call_ended("remote-bye")
        assert await serving == "call-ended"
        reg.placed_over("out-1")
        assert reg.outcome_of("out-1") is None and not reg._early and not reg._expected

    asyncio.run(main())


def test_an_outcome_without_an_application_is_kept_for_a_late_stream():
    async def main():
        reg = _registry({})
        reg.expect("out-2")
        reg.progress("out-2", "ringing", sip_status=180, reason="Ringing")
        reg.progress("out-2", "busy", sip_status=486, reason="Busy Here")
        reg.placed_over("out-2", "busy")
        events = [json.loads(e) for e in reg.outcome_of("out-2")]
        assert [e["event"] for e in events] == ["start", "ringing", "busy", "ended"]
        assert events[2]["sip_status"] == 486 and events[3]["reason"] == "busy"
        assert reg.outcome_of("out-2") is None  # told once
        reg.progress("out-3", "busy", sip_status=486, reason="Busy Here")  # a say call: nobody streams it
        reg.placed_over("out-3", "busy")
        assert reg.outcome_of("out-3") is None and not reg._early

    asyncio.run(main())


def test_an_answer_in_another_codec_moves_the_session_with_its_audio_and_marks():
    with_engine(_test_rebind)


async def _test_rebind(engine):
    first = _handle("PCMU")
    call = _Call(first)
    reg = _registry({"out-1": call})
    old_run, new_run = object(), object()
    session = _open(reg, first, engine, old_run)
    ch = _Channel()
    serving = asyncio.ensure_future(session.serve(ch))
    session.text("Your parcel arrives on Friday.", flush=True)
    session.mark("said")
    for _ in range(200):  # synthesised while it rings (nothing is popped before the answer)
        await asyncio.sleep(0.01)
        if first.queue.pending and session._speaker is None:
            break
    queued = first.queue.pending
    assert queued > 20
    before = decode_g711(b"".join(first.queue._frames), "PCMU").astype(float)  # what it would have sent
    # the answer picks PCMA: the call's audio is made again on a new handle; the old run ends first
    second = _handle("PCMA")
    call.queue = second.queue
    reg.close("out-1", old_run)
    assert reg.get("out-1") is session  # kept for the run that comes next
    assert _open(reg, second, engine, new_run) is session
    assert session.queue is second.queue and second.queue.pending == queued
    reg.close("out-1", old_run)  # (had the old run ended after: the session is the new run's now)
    assert reg.get("out-1") is session
    popped = await _pace(second.queue, queued + 20)
    pcm = decode_g711(b"".join(f for f in popped if f is not None), "PCMA").astype(float)
    assert len(pcm) == len(before) and np.abs(pcm).mean() > 100
    assert np.corrcoef(pcm, before)[0, 1] > 0.999  # the same speech, sample for sample, in A-law
    assert [e["event"] for e in ch.events] == ["start", "speaking", "mark", "idle"]
    second.call_ended("remote-bye")  # the stream follows the new handle: its end ends the stream
    assert await asyncio.wait_for(serving, 5) == "call-ended"
    call.ended = True
    reg.close("out-1", new_run)
    assert reg.get("out-1") is None and session.tasks() == 0
