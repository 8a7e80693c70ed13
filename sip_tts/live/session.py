"""One call driven by an application: text in, a running utterance out, events and the caller's audio back.

A ``LiveSession`` belongs to one call (its ``CallHandle``: the frame queue the pacer sends,
its digits, its end). Text fragments gather in a ``ClauseBuffer``; each speakable piece
becomes an utterance whose synthesis starts at once, up to ``LOOKAHEAD`` utterances ahead of
the one playing, so the next clause is ready before the current one ends (no gap between
them on the wire); text that waits meanwhile is merged into the next utterance. A speaker
task moves each utterance's audio into the frame queue as it arrives, in order, keeping
about a second (``AHEAD_FRAMES``) queued: synthesis follows playback instead of racing
through a long reply that a barge-in would throw away. ``clear`` drops the queue and cancels every synthesis in the same loop
turn: the pacer's next slot is silence.

The queue's frame counts and its one watch (``FrameQueue.watch``) say exactly when a given
frame went out: that dates the ``speaking`` event (its latency: the text that completed the
clause -> its first frame on the wire), ``mark`` events and ``idle``.

An application attaches through ``serve(channel)``; at most one at a time. Nothing here waits
on the application: events and audio frames go into a bounded ``Outbox`` that a writer task
drains; a client that stops reading loses audio frames (counted) and, past the event bound,
its connection. Text and audio are never logged: lengths and timings only.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from engine.audio import decode_g711, encode_g711
from engine.base import TtsEngine, VoiceSpec
from media import FRAME_SECONDS
from telephony.call import CallHandle

from .caller_audio import CallerFrames, FrameEncoder
from .channel import Channel
from .clauses import ClauseBuffer
from .protocol import BadCommand, Command, audio_message, event, parse_command

log = logging.getLogger("sip_tts.live")
LOOKAHEAD = 2  # utterances synthesising at once (the one playing and the next)
AHEAD_FRAMES = 50  # queue the next utterance once at most this much audio (1 s) is left to send
MAX_WAITING_TEXT = 32768  # characters queued and not yet being synthesised: more is refused
MAX_EVENTS = 256  # events waiting for a client that does not read: more closes its connection
MAX_FRAMES = 50  # caller audio frames waiting (1 s): older ones are dropped and counted
MAX_PENDING_TEXT = 16384  # characters buffered without a clause boundary or flush


class SessionBusy(RuntimeError):
    """Another application is attached to this call."""


class Backlog(ValueError):
    """More text is waiting to be spoken than ``MAX_WAITING_TEXT``."""


@dataclass(eq=False)
class _Utterance:
    text: str
    voice: VoiceSpec
    since: float  # loop time of the message that made it speakable
    engine_at: float | None = None  # loop time of the engine's first audio for it
    buf: bytearray = field(default_factory=bytearray)
    done: bool = False
    failed: bool = False
    task: asyncio.Task | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    codec: str = ""  # what its synthesis produces (the call's codec when it started)


@dataclass(eq=False)
class _Mark:
    name: str


@dataclass(eq=False)
class _Frames:
    frames: list[bytes]
    since: float


@dataclass(eq=False)
class _Hangup:
    pass


class Outbox:
    """What goes to the application, bounded: events in order, the caller's frames newest-kept."""

    def __init__(self, channel: Channel, max_events: int = MAX_EVENTS, max_frames: int = MAX_FRAMES) -> None:
        self.channel = channel
        self.events: deque[str] = deque()
        self.frames: deque[bytes] = deque()
        self.max_events, self.max_frames = max_events, max_frames
        self.frames_dropped = 0
        self.overflow = False
        self._wake = asyncio.Event()

    def event(self, text: str) -> None:
        if len(self.events) >= self.max_events:
            self.overflow = True
        else:
            self.events.append(text)
        self._wake.set()

    def frame(self, data: bytes) -> None:
        if len(self.frames) >= self.max_frames:
            self.frames.popleft()
            self.frames_dropped += 1
        self.frames.append(data)
        self._wake.set()

    @property
    def empty(self) -> bool:
        return not self.events and not self.frames

    async def run(self) -> None:
        """Send until cancelled; returns when the client fell too far behind (``overflow``)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.events or self.frames:
                if self.overflow:
                    return
                if self.events:
                    await self.channel.send_text(self.events.popleft())
                else:
                    await self.channel.send_bytes(self.frames.popleft())


class LiveSession:
    """One call under an application's control (see the package docstring for the protocol)."""

    def __init__(self, handle: CallHandle, engine: TtsEngine, voice: VoiceSpec,
                 voices: Callable[[str], VoiceSpec], hangup: Callable[[str], None]) -> None:
        self.handle = handle
        self.info = handle.info
        self.queue = handle.queue
        self.engine = engine
        self.voice = voice
        self._voices = voices
        self._hangup = hangup  # ends the call (reason) through the server
        self.loop = asyncio.get_event_loop()
        self.clauses = ClauseBuffer()
        self.active = 0  # steps running the session (a parked call, a connect step): controllable while > 0
        self.outbox: Outbox | None = None
        self.audio_format: str | None = None
        self.speaking = False
        self.latencies_ms: list[float] = []  # each speech run: text -> first frame on the wire
        self.utterances = 0
        self.underruns = 0  # slots with nothing to send in the middle of speech (synthesis behind the pacer)
        self._starved_at = 0
        self.frames_dropped = 0  # the caller's frames a slow client did not take
        self._segments: deque[_Utterance | _Mark | _Frames | _Hangup] = deque()
        self._speaker: asyncio.Task | None = None
        self._watches: list[tuple[int, int, str, object]] = []  # heap: (frame number, seq, kind, data)
        self._seq = 0
        self._taken = asyncio.Event()  # an application has taken the call (attached, or a request)
        self._released = asyncio.Event()  # its connection ended
        self._frames: CallerFrames | None = None
        self._encoder: FrameEncoder | None = None
        self._frame_number = 0
        self._serving: set[asyncio.Future] = set()  # the attached connection's tasks
        # A placed call's progress so far (ringing, answered: sip_tts/outbound.py through the
        # registry), replayed after ``start`` to an application that attaches later.
        self.progress: list[str] = []
        self.answered_at: float | None = None  # loop time of a placed call's answer
        self.owner: object = None  # the script run driving the session (the registry's business)
        self._rebound: asyncio.Future | None = None  # set by ``rebind``: serve() follows the new handle

    # -- what is playing ------------------------------------------------------------------
    def tasks(self) -> int:
        """Tasks the session holds now (speaker, syntheses, the attached connection's): 0 when it is idle."""
        synth = sum(1 for s in self._segments if isinstance(s, _Utterance) and s.task is not None and not s.task.done())
        return synth + (self._speaker is not None) + len(self._serving)

    @property
    def queued_ms(self) -> int:
        return round(self.queue.pending * FRAME_SECONDS * 1000)

    def status(self) -> dict:
        return {"active": self.active > 0, "attached": self.outbox is not None, "speaking": self.speaking,
                "queued_ms": self.queued_ms,
                "pending_utterances": sum(isinstance(s, _Utterance) for s in self._segments),
                "utterances": self.utterances, "underrun_frames": self.underruns,
                "latency_ms": self.latencies_ms[-1] if self.latencies_ms else None, "audio": self.audio_format,
                "audio_frames_dropped": self.frames_dropped + (self.outbox.frames_dropped if self.outbox else 0),
                "caller_frames_lost": self._frames.lost if self._frames else 0}

    # -- control (the WebSocket's commands and the HTTP routes) -------------------------------
    def text(self, fragment: str, flush: bool = False, voice: str | None = None) -> None:
        """A fragment of the running utterance; speaks at the first clause boundary (or now, with ``flush``)."""
        self._taken.set()
        now = self.loop.time()
        if voice is not None:
            spec = self._voices(voice)  # (raises KeyError: unknown)
            if spec != self.voice:
                self._speak(self.clauses.flush(), now)  # what came before is said in the voice it was written for
                self.voice = spec
        waiting = len(self.clauses) + sum(len(seg.text) for seg in self._segments
                                          if isinstance(seg, _Utterance) and seg.task is None)
        if waiting + len(fragment) > MAX_WAITING_TEXT:
            raise Backlog(f"text: more than {MAX_WAITING_TEXT} characters are waiting to be spoken "
                          "(wait for a mark or idle)")
        if len(self.clauses) + len(fragment) > MAX_PENDING_TEXT:
            self._speak(self.clauses.flush(), now)
        self.clauses.feed(fragment)
        self._speak(self.clauses.flush() if flush else self.clauses.ready(), now)

    def say(self, text: str, voice: str | None = None, interrupt: bool = False) -> None:
        """A whole utterance (HTTP ``say``): after what is queued, or instead of it (``interrupt``)."""
        if interrupt:
            self.clear()
        self.text("", flush=True)
        self.text(text, flush=True, voice=voice)

    def play(self, frames: list[bytes], interrupt: bool = False) -> None:
        """Ready-made frames in the call's codec (a WAV, a cached prompt)."""
        self._taken.set()
        if interrupt:
            self.clear()
        now = self.loop.time()
        self._speak(self.clauses.flush(), now)
        self._push(_Frames(frames, now))

    def flush(self) -> None:
        self._speak(self.clauses.flush(), self.loop.time())

    def mark(self, name: str) -> None:
        """Reported back (``mark`` event) when everything before it has been sent; it ends the clause."""
        self._taken.set()
        self.flush()
        self._push(_Mark(name))

    def hangup(self, now: bool = False) -> None:
        """End the call: after what is queued has played, or at once."""
        self._taken.set()
        if now:
            self._hangup("app-hangup")
            return
        self.flush()
        self._push(_Hangup())

    def clear(self) -> int:
        """Stop what is playing, drop what is queued (text, synthesis, frames); frames dropped. Marks
        are answered as cleared; a hangup that was waiting for the audio happens now."""
        dropped = self.queue.pending
        marks = [seg.name for seg in self._segments if isinstance(seg, _Mark)]
        marks = [data for _, _, kind, data in sorted(self._watches) if kind == "mark"] + marks
        hangup = any(isinstance(seg, _Hangup) for seg in self._segments) or any(
            kind == "hangup" for _, _, kind, _ in self._watches)
        self._stop()
        self.clauses.clear()
        self.queue.flush()
        self.speaking = False
        for name in marks:
            self._emit(event("mark", name=name, cleared=True))
        self._emit(event("cleared", dropped_ms=round(dropped * FRAME_SECONDS * 1000)))
        if hangup:
            self._hangup("app-hangup")
        return dropped

    def rebind(self, handle: CallHandle) -> None:
        """The call's audio is made again on a new handle: a placed call answered in another codec
        than the first offered one (nothing has been sent yet). What is queued moves over, turned
        into the new codec (G.711 to G.711: sample for sample), with the frame numbers its marks
        and events wait for; syntheses under way go on and are turned as they arrive."""
        old, old_codec = self.queue, self.info.codec
        self.handle.listen(None)
        old.watch(0, None)
        old.pad_frame()
        base = old.sent + old.dropped
        frames = []
        while (frame := old.pop()) is not None:
            frames.append(frame)
        self.handle, self.info, self.queue = handle, handle.info, handle.queue
        codec = self.info.codec
        if codec != old_codec:
            frames = [_transcode(f, old_codec, codec) for f in frames]
            for seg in self._segments:
                if isinstance(seg, _Frames):
                    seg.frames = [_transcode(f, old_codec, codec) for f in seg.frames]
        shift = self.queue.sent + self.queue.dropped + self.queue.pending - base
        self._watches = [(n + shift, seq, kind, data) for n, seq, kind, data in self._watches]
        heapq.heapify(self._watches)
        self._arm()  # before the push: a talkspurt may send the first frame inside it
        self.queue.push_frames(frames)
        if self.audio_format is not None:
            self._frames = None
            self._set_audio(self.audio_format)
        if self._rebound is not None and not self._rebound.done():
            self._rebound.set_result(None)
        log.info("call %s: live session moved to the call's %s audio (%d frames queued)", self.info.call_id,
                 codec, len(frames))

    def close(self) -> None:
        """The call's script is over (or the call ended): stop every task the session holds (the
        speaker may be waiting for the queue to drain, which a call that ended never does)."""
        self._stop()
        self.handle.listen(None)

    def _stop(self) -> None:
        """Cancel the syntheses and the speaker; forget what was queued and watched."""
        for seg in self._segments:
            if isinstance(seg, _Utterance) and seg.task is not None:
                seg.task.cancel()
        self._segments.clear()
        if self._speaker is not None:
            self._speaker.cancel()
            self._speaker = None
        self._watches.clear()
        self.queue.watch(0, None)

    def _speak(self, text: str | None, since: float) -> None:
        if text:
            self._push(_Utterance(text, self.voice, since))

    def _push(self, seg: _Utterance | _Mark | _Frames | _Hangup) -> None:
        self._segments.append(seg)
        self._synthesize_ahead()
        if self._speaker is None:
            self._speaker = asyncio.ensure_future(self._speak_all())

    # -- synthesis and the speaker -----------------------------------------------------------
    def _synthesize_ahead(self) -> None:
        """Start syntheses until ``LOOKAHEAD`` run; text that waited is merged into one utterance
        (consecutive clauses of one voice, nothing between them): fewer, longer utterances."""
        running, i = 0, 0
        while i < len(self._segments):  # (merging deletes the segments after i)
            seg = self._segments[i]
            i += 1
            if not isinstance(seg, _Utterance) or seg.done:
                continue
            if seg.task is None:
                if running >= LOOKAHEAD:
                    return
                self._merge_after(i - 1, seg)
                seg.task = asyncio.ensure_future(self._synthesize(seg))
            running += 1

    def _merge_after(self, i: int, u: _Utterance) -> None:
        while i + 1 < len(self._segments):
            nxt = self._segments[i + 1]
            if not (isinstance(nxt, _Utterance) and nxt.task is None and nxt.voice == u.voice
                    and len(u.text) + len(nxt.text) < self.clauses.max_chars):
                return
            u.text = f"{u.text} {nxt.text}"
            del self._segments[i + 1]

    async def _synthesize(self, u: _Utterance) -> None:
        self.utterances += 1
        u.codec = self.info.codec
        try:
            async for data in self.engine.stream_line(u.text, u.voice, u.codec):
                if u.engine_at is None:
                    u.engine_at = self.loop.time()
                u.buf += data
                u.ready.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the engine's failure: reported, the call goes on
            log.warning("call %s: live synthesis failed (%d characters): %s", self.info.call_id, len(u.text),
                        type(exc).__name__)
            u.failed = True
        finally:
            u.done = True
            u.ready.set()
            if u in self._segments:  # (not after a clear)
                self._synthesize_ahead()

    async def _speak_all(self) -> None:
        try:
            while self._segments:
                seg = self._segments[0]
                if isinstance(seg, (_Utterance, _Frames)):
                    await self._room()
                if isinstance(seg, _Utterance):
                    await self._play_utterance(seg)
                elif isinstance(seg, _Frames):
                    self.queue.pad_frame()
                    self._start_run(seg.since)
                    self.queue.push_frames(seg.frames)
                elif isinstance(seg, _Mark):
                    self.queue.pad_frame()
                    self._watch(self.queue.queued, "mark", seg.name)
                else:
                    self.queue.pad_frame()
                    self._watch(self.queue.queued, "hangup", None)
                self._segments.popleft()
                self._synthesize_ahead()
            self._watch(self.queue.queued, "idle", None)
        finally:
            if self._speaker is asyncio.current_task():
                self._speaker = None

    async def _room(self) -> None:
        """Until at most ``AHEAD_FRAMES`` are left to send: synthesis keeps about a second and an
        utterance ahead of the wire, not the whole reply (a clear then wastes little work)."""
        if self.queue.pending > AHEAD_FRAMES:
            room = self.loop.create_future()
            q = self.queue
            self._watch(q.sent + q.dropped + q.pending - AHEAD_FRAMES, "room", room)  # exact, from the pacer's pops
            await room

    async def _play_utterance(self, u: _Utterance) -> None:
        started = False
        while True:
            await u.ready.wait()
            u.ready.clear()
            if u.buf:
                if not started:
                    self.queue.pad_frame()
                    self._start_run(u.since, u.engine_at)
                    started = True
                data = bytes(u.buf)
                if u.codec != self.info.codec:  # synthesis started before the call was rebound
                    data = _transcode(data, u.codec, self.info.codec)
                self.queue.push(data)
                u.buf.clear()
            if u.done:
                break
        self.queue.pad_frame()
        if u.failed:
            self._emit(event("error", message="synthesis failed", field="text"))

    def _start_run(self, since: float, engine_at: float | None = None) -> None:
        """Audio is about to be queued: if nothing is playing, it starts a speech run (``speaking``)."""
        if not self.speaking:
            self.speaking = True
            self._watch(self.queue.queued + 1, "speaking", (since, engine_at))

    # -- frame watches: when audio reached the wire -------------------------------------------
    def _watch(self, frame: int, kind: str, data: object) -> None:
        self._seq += 1
        heapq.heappush(self._watches, (frame, self._seq, kind, data))
        if frame <= self.queue.sent + self.queue.dropped:
            self.loop.call_soon(self._fire, self.loop.time())
        else:
            self._arm()

    def _arm(self) -> None:
        self.queue.watch(self._watches[0][0], self._on_pop) if self._watches else self.queue.watch(0, None)

    def _on_pop(self) -> None:
        """(in the pacer's tick: the frame goes out now) handled right after the tick."""
        self.loop.call_soon(self._fire, self.loop.time())

    def _fire(self, at: float) -> None:
        passed = self.queue.sent + self.queue.dropped
        while self._watches and self._watches[0][0] <= passed:
            _, _, kind, data = heapq.heappop(self._watches)
            if kind == "speaking":
                self._starved_at = self.queue.starved
                since, engine_at = data  # type: ignore[misc]
                # text sent while a placed call rang: its latency counts from the answer
                ms = round((at - max(since, self.answered_at or since)) * 1000, 1)
                self.latencies_ms.append(ms)
                self._emit(event("speaking", latency_ms=ms, engine_ms=round((engine_at - since) * 1000, 1)
                                 if engine_at is not None else None))
            elif kind == "mark":
                self._emit(event("mark", name=data))
            elif kind == "idle":
                if self._speaker is None and not self._segments and not self.queue.pending and self.speaking:
                    self.speaking = False
                    gaps = self.queue.starved - self._starved_at
                    self.underruns += gaps
                    self._emit(event("idle", underrun_frames=gaps))
            elif kind == "hangup":
                self._hangup("app-hangup")
            elif kind == "room" and not data.done():  # type: ignore[union-attr]
                data.set_result(None)  # type: ignore[union-attr]
        self._arm()

    async def played(self) -> None:
        """Until nothing is queued or being synthesised."""
        while self._speaker is not None or self.queue.pending:
            await asyncio.sleep(max(self.queue.pending, 1) * FRAME_SECONDS)

    # -- the caller's audio ------------------------------------------------------------------
    def _set_audio(self, fmt: str) -> None:
        if fmt == "off":
            self.handle.listen(None)
            self.audio_format = None
            return
        self._encoder = FrameEncoder(self.info.codec, fmt)
        if self._frames is None:
            self._frames = CallerFrames(self.info.codec)
        self.audio_format = fmt
        self.handle.listen(self._caller_packet)

    def _caller_packet(self, seq: int, timestamp: int, payload: bytes) -> None:
        assert self._frames is not None and self._encoder is not None
        outbox = self.outbox
        for frame in self._frames.feed(seq, timestamp, payload):
            if outbox is not None:
                outbox.frame(audio_message(self._frame_number, frame.timestamp, frame.filled,
                                           self._encoder.encode(frame.payload)))
            self._frame_number += 1

    # -- the application's connection ---------------------------------------------------------
    def _emit(self, text: str) -> None:
        if self.outbox is not None:
            self.outbox.event(text)

    def notify(self, kind: str, /, **fields: object) -> None:
        """An event from outside the session (a placed call's progress: ``ringing``, ``answered``,
        an outcome): sent to the attached application, and kept for one that attaches later."""
        text = event(kind, **fields)
        self.progress.append(text)
        if kind == "answered":
            self.answered_at = self.loop.time()
        self._emit(text)

    async def park(self, wait_s: float) -> bool:
        """A route's ``live`` step: wait up to ``wait_s`` for an application to take the call, then
        until its connection ends and what it queued has played. False: nobody came."""
        self.active += 1
        try:
            try:
                await asyncio.wait_for(self._taken.wait(), wait_s)
            except asyncio.TimeoutError:
                log.info("call %s: no application took the call within %.0f s", self.info.call_id, wait_s)
                return False
            await self._released.wait()
            await self.played()
            return True
        finally:
            self.active -= 1

    async def serve(self, channel: Channel, detached: Callable[[], None] | None = None) -> str:
        """Run the protocol over ``channel`` until the application closes it, the call ends or the
        client falls behind; returns which (``closed``, ``call-ended``, ``slow-client``).
        ``SessionBusy`` if another application is attached. ``detached`` runs before the channel is
        closed (an application that sees the close may open its next connection at once)."""
        if self.outbox is not None:
            raise SessionBusy("another application is attached to this call")
        outbox = self.outbox = Outbox(channel)
        self._taken.set()
        self._released.clear()
        self.active += 1
        info = self.info
        log.info("call %s: application attached", info.call_id)
        outbox.event(event("start", call_id=info.call_id, caller=info.caller, dialed=info.dialed, codec=info.codec,
                           audio_formats=["pcm16_8k", "pcm16_16k", "mulaw"]))
        for text in self.progress:  # what a placed call went through before this application came
            outbox.event(text)
        writer = asyncio.ensure_future(outbox.run())
        reader = asyncio.ensure_future(self._read(channel))
        why = "closed"
        digits = ended = None
        try:
            while True:  # (again when the session is rebound: the call's digits and end are the new handle's)
                digits = asyncio.ensure_future(self._forward_digits())
                ended = asyncio.ensure_future(self.handle.ended.wait())
                rebound = self._rebound = self.loop.create_future()
                self._serving = {writer, reader, digits, ended}
                done, _ = await asyncio.wait({writer, reader, ended, rebound}, return_when=asyncio.FIRST_COMPLETED)
                if done != {rebound}:
                    rebound.cancel()
                    break
                digits.cancel()
                ended.cancel()
            if ended in done:
                why = "call-ended"
                reason = self.handle.end_reason or ""
                if reason in ("remote-bye", "cancel"):
                    outbox.event(event("hangup", by="caller"))
                outbox.event(event("ended", reason=reason, utterances=self.utterances,
                                   audio_frames_dropped=outbox.frames_dropped,
                                   caller_frames_lost=self._frames.lost if self._frames else 0))
                if not writer.done():
                    try:  # the last events, briefly: a client that does not read does not hold us
                        await asyncio.wait_for(self._drained(outbox), 1.0)
                    except asyncio.TimeoutError:
                        pass
            elif writer in done and writer.exception() is None:
                why = "slow-client"
                log.warning("call %s: application not reading (%d events waiting): disconnected",
                            info.call_id, len(outbox.events))
        finally:
            tasks = [t for t in (writer, reader, digits, ended) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._rebound = None
            self._serving = set()
            self.frames_dropped += outbox.frames_dropped
            self.outbox = None
            self.handle.listen(None)
            self.audio_format = None
            self.active -= 1
            self._released.set()
            if detached is not None:
                detached()
            try:
                await asyncio.wait_for(channel.close(1000 if why != "slow-client" else 1008,
                                                     "" if why != "slow-client" else "not reading"), 2.0)
            except Exception:  # (a connection already gone)
                pass
            log.info("call %s: application detached (%s); %d utterances, %d caller frames dropped",
                     info.call_id, why, self.utterances, self.frames_dropped)
        return why

    @staticmethod
    async def _drained(outbox: Outbox) -> None:
        while not outbox.empty:
            await asyncio.sleep(0.01)

    async def _read(self, channel: Channel) -> None:
        async for raw in channel.messages():
            if isinstance(raw, bytes):
                self._emit(event("error", message="binary messages are not accepted: send JSON text", field=None))
                continue
            try:
                self.command(parse_command(raw))
            except BadCommand as exc:
                self._emit(event("error", message=str(exc), field=exc.field))

    def command(self, cmd: Command) -> None:
        """One message of the application (the order within it: audio, clear, text, mark, flush, hangup)."""
        if cmd.audio is not None:
            self._set_audio(cmd.audio)
        if cmd.clear:
            self.clear()
        if cmd.text is not None or cmd.voice is not None:
            try:
                self.text(cmd.text or "", flush=cmd.flush, voice=cmd.voice)
            except KeyError:
                raise BadCommand(f"voice: {cmd.voice!r} not found (GET /v1/voices)", "voice") from None
            except Backlog as exc:
                raise BadCommand(str(exc), "text") from None
        elif cmd.flush:
            self.flush()
        if cmd.mark is not None:
            self.mark(cmd.mark)
        if cmd.hangup:
            self.hangup(now=cmd.clear)

    async def _forward_digits(self) -> None:
        while True:
            digit = await self.handle.next_digit(3600)
            if digit is not None:
                self._emit(event("dtmf", digit=digit))



def _transcode(data: bytes, src: str, dst: str) -> bytes:
    """G.711 in one law as the other (through 16-bit linear: what the far end hears is the same)."""
    return encode_g711(decode_g711(data, src), dst)
