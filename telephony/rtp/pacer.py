"""One clock for every call's RTP: absolute 20 ms deadlines on a monotonic clock.

The ``Pacer`` core is sans-IO: ``on_tick(now)`` returns the packets due for
the current slot and ``next_deadline()`` says when to call it again. The thin
``PacerClock`` drives it from asyncio with a single ``call_at`` timer for all
calls, never a task or a sleep per call.

Deadlines are ``origin + k * 20 ms``; they never drift with scheduling delay.
If the loop stalls past one or more slots, those slots are skipped, not sent
in a burst: every stream's RTP timestamp advances by the skipped time (so a
receiver's playout clock stays true to wall time) and the skip is counted.

Silence: while a call's audio is not ready yet (synthesis still running) the
pacer sends G.711 silence frames with continuous sequence numbers and
timestamps. Continuous silence keeps NAT bindings and jitter buffers steady and
is what a PSTN leg does anyway; the marker bit is set on the first packet, and on the first
speech packet after silence (a talkspurt, below).

Hold: a held call (the caller's SDP says sendonly or inactive) sends nothing and
its prompt waits; its timestamp keeps following the clock. On resume the same
SSRC goes on with the next sequence number, a timestamp that reflects the time
on hold, and the marker bit (a new talkspurt, RFC 3551 §4.1).

Talkspurt start (speech after silence): a call that was sending silence because nothing was
queued does not wait for its next 20 ms slot when audio arrives. ``FrameQueue`` tells the clock
the moment its first frame is queued (``on_ready``) and ``Pacer.talkspurt`` re-phases the call:
its phase moves to the sub-slot the clock served last (the one at hand: at most one sub-slot,
2 ms, back), its first speech frame is sent at once as that sub-slot's packet, and its later
frames follow on that phase's absolute 20 ms deadlines. Every packet keeps the one rule the
pacer has: its RTP timestamp is its slot's time on the grid, so the timestamp advances by the
time that really passed since the last packet, to the sub-slot (16 samples with 10 phases), not
a whole 160: the silence already sent is cut short where the speech starts, wall-clock time and
timestamps agree within a sub-slot (the lateness of the loop aside, as for every packet), and the
marker bit says a talkspurt starts (RFC 3551 §4.1), so a receiver re-synchronises its playout and
plays it at once; one that plays by sequence number plays it when it would have anyway.
The comfort silence keeps flowing while nothing is said (NAT bindings, RTCP, a PSTN leg's habits):
the re-phase is what lets it coexist with speech that starts the moment it is ready.
Limits: when the call's silence went out in the sub-slot just served, its speech takes the next
sub-slot (at most 2 ms later). A phase takes a re-phased call only while it holds fewer than
``Pacer.rephase_cap`` calls (the average plus a quarter, or 32: a burst of 32 sends takes about
0.1 ms), else the next sub-slot with room does, never later than the call's own next slot. So
calls that start speaking together (one GPU batch) keep the bursts spread: a wake-up's burst
grows at most to the cap (phases that calls left send smaller ones), and no other call's packet
is later than its place in such a burst. A stream whose audio is ready when it joins (a cached prompt) goes out at once
only into a phase below the average and one, the way ``add`` balances them. A held call, and a
call in the middle of speech (its queue ran dry between two slots), are not re-phased: the
first sends nothing, the second must not leave a gap in its audio.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import struct

_HEADER = struct.Struct("!BBHII")

from media import FRAME_SAMPLES, FRAME_SECONDS, SILENCE  # noqa: F401 (SILENCE: re-exported for callers)


class FrameQueue:
    """Encoded audio waiting to be sent, cut into 160-byte frames.

    The producer (synthesis) pushes bytes of any length and calls ``finish``;
    the pacer pops one frame per slot.
    """

    def __init__(self, silence_byte: int) -> None:
        self._frames: deque[bytes] = deque()
        self._partial = bytearray()
        self._silence = silence_byte
        self.finished = False
        # Running counts (frames queued, sent, dropped by flush) and one watch: ``watch(n, f)``
        # calls ``f()`` from the pacer's tick when the n-th frame ever queued is popped, so an
        # application learns exactly when its audio reached the wire (live calls' marks).
        self.queued = 0
        self.sent = 0
        self.dropped = 0
        self.starved = 0  # pops that found nothing queued (the pacer sent silence)
        self._watch_at = 0
        self._on_watch: Callable[[], None] | None = None
        # Called when a frame is queued into an empty queue (the pacer clock's: a talkspurt may
        # start now, not at the call's next slot). It may pop the frame it was called for.
        self.on_ready: Callable[[], None] | None = None

    def push(self, data: bytes) -> None:
        empty = not self._frames
        self._partial += data
        while len(self._partial) >= FRAME_SAMPLES:
            self._frames.append(bytes(self._partial[:FRAME_SAMPLES]))
            del self._partial[:FRAME_SAMPLES]
            self.queued += 1
        if empty and self._frames and self.on_ready is not None:
            self.on_ready()

    def push_frames(self, frames: list[bytes]) -> None:
        """Whole ready-made frames (a cached prompt): no copying."""
        empty = not self._frames
        self._frames.extend(frames)
        self.queued += len(frames)
        if empty and self._frames and self.on_ready is not None:
            self.on_ready()

    def pad_frame(self) -> None:
        """Complete a partial frame with silence, so what is pushed next starts on a frame boundary."""
        if self._partial:
            empty = not self._frames
            pad = FRAME_SAMPLES - len(self._partial)
            self._frames.append(bytes(self._partial) + bytes([self._silence]) * pad)
            self._partial.clear()
            self.queued += 1
            if empty and self.on_ready is not None:
                self.on_ready()

    def finish(self) -> None:
        self.pad_frame()
        self.finished = True

    def flush(self) -> None:
        """Drop everything queued (barge-in)."""
        self.dropped += len(self._frames)
        self._frames.clear()
        self._partial.clear()

    def watch(self, frame: int, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` when frame number ``frame`` (1 = the first ever queued) is sent (None: no watch)."""
        self._watch_at, self._on_watch = frame, callback

    def pop(self) -> bytes | None:
        if not self._frames:
            self.starved += 1
            return None
        self.sent += 1
        if self._on_watch is not None and self.sent + self.dropped >= self._watch_at:
            callback, self._on_watch = self._on_watch, None
            callback()
        return self._frames.popleft()

    @property
    def pending(self) -> int:
        """Frames waiting to be sent."""
        return len(self._frames)

    @property
    def exhausted(self) -> bool:
        return self.finished and not self._frames

    def __len__(self) -> int:
        return len(self._frames)


@dataclass
class RtpSender:
    """One call's outgoing RTP stream: random SSRC, sequence and timestamp (RFC 3550 §5.1)."""

    payload_type: int
    codec: str
    send: Callable[[bytes], None]
    queue: FrameQueue
    on_done: Callable[[], None] | None = None
    ssrc: int = field(default_factory=lambda: secrets.randbits(32))
    sequence: int = field(default_factory=lambda: secrets.randbits(16))
    timestamp: int = field(default_factory=lambda: secrets.randbits(32))
    packets_sent: int = 0
    silence_frames: int = 0  # frames sent as silence because audio was not ready
    skipped_frames: int = 0  # slots lost to a stalled loop
    first_audio_at: float | None = None
    paused: bool = False  # on hold: nothing is sent, the prompt waits, the clock goes on
    talkspurts: int = 0  # speech after silence sent before the call's old slot (re-phased)
    idle: bool = True  # nothing sent yet, or the last packet was silence because nothing was queued
    rephased_to: int = -1  # the sub-slot a talkspurt was last moved to (never one before it again)
    _marker: bool = True

    def skip_slot(self) -> None:
        """A slot passes while on hold: the timestamp follows the clock; the next packet is a new talkspurt."""
        self.timestamp = (self.timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
        self._marker = True

    def lose_frames(self, n: int) -> None:
        """``n`` slots lost to a stalled loop: the timestamp follows the clock (on hold: as ``skip_slot``)."""
        self.timestamp = (self.timestamp + FRAME_SAMPLES * n) & 0xFFFFFFFF
        if self.paused:
            self._marker = True
        else:
            self.skipped_frames += n

    def next_packet(self, now: float, skipped_slots: int = 0) -> bytes:
        if skipped_slots:
            self.lose_frames(skipped_slots)
        frame = self.queue.pop()
        if frame is None:
            frame = bytes([SILENCE[self.codec]]) * FRAME_SAMPLES
            self.silence_frames += 1
            self.idle = True
        elif self.idle:  # (one test per packet in speech, as before) speech after silence: a talkspurt
            self.idle = False
            self._marker = True  # (RFC 3551 §4.1; already set on a stream's first packet)
            if self.first_audio_at is None:
                self.first_audio_at = now
        # The fixed header packed directly (this runs for every call every 20 ms; the
        # RtpPacket dataclass is for parsing and tests): same bytes as RtpPacket.serialize().
        head = _HEADER.pack(0x80, (0x80 if self._marker else 0) | self.payload_type, self.sequence,
                            self.timestamp, self.ssrc)
        self._marker = False
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
        self.packets_sent += 1
        return head + frame


class Pacer:
    """Sans-IO pacing core: which packets are due at ``now``.

    Calls are spread over ``phases`` sub-slots of the 20 ms frame (a call keeps its
    phase for life): with 1,000 calls and 10 phases each timer wake-up sends 100
    packets instead of 1,000, so a packet's position in its burst — and so its send
    time — varies by a tenth as much from one frame to the next. Each call still
    sends exactly every 20 ms on its own absolute grid (origin + phase offset + k x 20 ms);
    ``talkspurt`` moves a call to another phase when its speech starts after silence (see the
    module docstring).
    """

    REPHASE_SLACK = 0.25  # a phase takes re-phased calls up to the average plus this share (and one)
    REPHASE_MIN_CAP = 32  # ... or up to this many: a burst of 32 sends is a tenth of a millisecond

    def __init__(self, origin: float, interval: float = FRAME_SECONDS, phases: int = 1) -> None:
        self.interval = interval
        self.origin = origin
        self.phases = phases
        self._tick = 0  # sub-slot counter: deadline = origin + tick * interval / phases
        self._groups: list[dict[int, RtpSender]] = [{} for _ in range(phases)]
        self._phase_of: dict[int, int] = {}
        self.skipped_slots = 0
        self.rephased = 0  # talkspurts moved to an earlier sub-slot

    def add(self, sender: RtpSender) -> None:
        phase = min(range(self.phases), key=lambda p: len(self._groups[p]))  # the least loaded
        self._groups[phase][id(sender)] = sender
        self._phase_of[id(sender)] = phase

    def remove(self, sender: RtpSender) -> None:
        phase = self._phase_of.pop(id(sender), None)
        if phase is not None:
            self._groups[phase].pop(id(sender), None)

    def __len__(self) -> int:
        return len(self._phase_of)

    def next_deadline(self) -> float:
        return self.origin + self._tick * self.interval / self.phases

    def phase_of(self, sender: RtpSender) -> int | None:
        return self._phase_of.get(id(sender))

    def group_sizes(self) -> list[int]:
        return [len(g) for g in self._groups]

    @property
    def rephase_cap(self) -> int:
        """Calls a phase may hold and still take a re-phased one: keeps the bursts spread."""
        return max(int(len(self) * (1 + self.REPHASE_SLACK) / self.phases) + 1, self.REPHASE_MIN_CAP)

    def talkspurt(self, sender: RtpSender, now: float) -> bytes | None:
        """Audio was just queued for ``sender`` after silence: the packet to send now, or None.

        The call moves to the earliest sub-slot, from the one served last (``tick - 1``) up to its
        own next slot, that it has not sent in yet and whose phase has room (``rephase_cap``).
        Its RTP timestamp is moved back by the sub-slots it gains (the timestamp stays the slot's
        time on the grid) and the marker bit is set. The sub-slot served last is sent now; a
        later one is sent by its tick. Held calls and calls in the middle of speech: None.
        """
        key = id(sender)
        phase = self._phase_of.get(key)
        if phase is None or sender.paused or not sender.idle or not sender.queue.pending:
            return None
        served = self._tick - 1
        # The sender's next slot in its own phase (its ``timestamp`` is that slot's time).
        own = served + 1 + (phase - served - 1) % self.phases
        if not sender.packets_sent:
            # A new stream (its audio ready when it joins: a cached prompt): any sub-slot can be its
            # first, but only into a phase below the average and one, as ``add`` balances them
            # (a thousand calls that join at once must not crowd into the phases at hand).
            first, cap = served, len(self) // self.phases + 1
        else:
            first = served if own != served + self.phases else served + 1  # not twice in one sub-slot
            first = max(first, sender.rephased_to)  # (moved to a coming sub-slot, then cleared: not back)
            cap = self.rephase_cap
        slot = own
        for j in range(first, own):
            if j % self.phases == phase or len(self._groups[j % self.phases]) < cap:
                slot = j
                break
        if slot == own:
            return None  # no earlier sub-slot with room: its own slot, as before
        target = slot % self.phases
        if target != phase:
            del self._groups[phase][key]
            self._groups[target][key] = sender
            self._phase_of[key] = target
        sender.rephased_to = slot
        if sender.packets_sent:
            gained = own - slot  # sub-slots earlier than its old slot
            sender.timestamp = (sender.timestamp - FRAME_SAMPLES * gained // self.phases) & 0xFFFFFFFF
            sender._marker = True
            sender.talkspurts += 1
            self.rephased += 1
        if slot > served:
            return None  # the coming sub-slot's tick sends it (in at most one sub-slot)
        return sender.next_packet(now)

    def on_tick(self, now: float) -> tuple[list[tuple[RtpSender, bytes]], list[RtpSender]]:
        """Packets for this sub-slot, and the senders whose audio ran out (now removed)."""
        late = now - self.next_deadline()
        skipped = int(late // self.interval) if late >= self.interval else 0
        if skipped:  # whole frames lost to a stall: skipped, not sent in a burst
            self._tick += skipped * self.phases
            self.skipped_slots += skipped
            # Every phase lost the same frames, but only this phase is served now: the other
            # phases' calls advance their timestamps here (else they would lag wall time by the stall).
            current = self._tick % self.phases
            for phase, others in enumerate(self._groups):
                if phase != current:
                    for sender in others.values():
                        sender.lose_frames(skipped)
        group = self._groups[self._tick % self.phases]
        out: list[tuple[RtpSender, bytes]] = []
        done: list[RtpSender] = []
        for key, sender in list(group.items()):
            if sender.queue.exhausted:
                del group[key]
                self._phase_of.pop(key, None)
                done.append(sender)
                continue
            if sender.paused:
                for _ in range(skipped + 1):
                    sender.skip_slot()
                continue
            out.append((sender, sender.next_packet(now, skipped)))
        self._tick += 1
        return out, done


_log = logging.getLogger(__name__)
_SCHEDSTAT = "/proc/thread-self/schedstat"


def _thread_schedstat() -> tuple[int, int]:
    """(ns this thread has run on a CPU, ns it has waited on a run queue), from the Linux kernel."""
    with open(_SCHEDSTAT, "rb") as f:
        ran, waited, _ = f.read().split()
    return int(ran), int(waited)


def _others_ran() -> dict[int, int]:
    """ns each other thread of this process has run on a CPU (native thread id → ns)."""
    me = threading.get_native_id()
    out = {}
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                out[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return out


class PacerClock:
    """Drives a ``Pacer`` from the asyncio loop with one timer for all calls.

    It also counts wake-ups that came more than ``LATE_WAKEUP`` after their deadline
    (``late_wakeups``, ``max_lateness``): every call's packet of that slot goes out late
    by as much. After ``enable_diagnosis`` (``SIP_TTS_PACER_DIAG=1``) each late wake-up is logged
    with what this thread did since the previous tick, read from the kernel
    (/proc/thread-self/schedstat): time it ran, time it waited for a CPU, and the rest
    (asleep: in the selector, or waiting for the GIL), and which other threads of the
    process ran lately (their counters are read every ``OTHERS_EVERY``). That tells an overloaded host (run-queue wait), a slow
    callback (run time) and a thread blocked on the GIL (asleep while another ran) apart.
    """

    LATE_WAKEUP = 0.010
    OTHERS_EVERY = 0.050  # seconds between reads of the other threads' counters (diagnosis)

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, phases: int = 10) -> None:
        self._loop = loop or asyncio.get_event_loop()
        self.pacer = Pacer(self._loop.time(), phases=phases)
        self._handle: asyncio.TimerHandle | None = None
        self.send_errors = 0
        self.late_wakeups = 0
        self.max_lateness = 0.0
        self._diagnose = False
        self._last: tuple[float, int, int] | None = None  # (loop time, ns run, ns waiting) at the last tick
        self._others: dict[int, int] = {}  # other threads' ns run when last read
        self._others_at = float("-inf")  # loop time of that read

    def add(self, sender: RtpSender) -> None:
        self.pacer.add(sender)
        if self._handle is None:
            # Restart the grid at the next whole slot of the original origin.
            now = self._loop.time()
            sub = self.pacer.interval / self.pacer.phases
            ticks = int((now - self.pacer.origin) // sub) + 1
            self.pacer._tick = max(self.pacer._tick, ticks)
            self._schedule()
        sender.queue.on_ready = lambda: self.talkspurt(sender)
        if sender.queue.pending:  # audio already there (a cached prompt): it need not wait for a slot
            self.talkspurt(sender)

    def remove(self, sender: RtpSender) -> None:
        self.pacer.remove(sender)
        sender.queue.on_ready = None

    def talkspurt(self, sender: RtpSender) -> None:
        """Audio was queued after silence: sent now if the pacer re-phases the call (``Pacer.talkspurt``)."""
        # Called from whoever queued the audio (a producer task, the SIP pump adding a call): nothing
        # of this call's early packet may escape into them; the call's next slot sends as usual.
        try:
            data = self.pacer.talkspurt(sender, self._loop.time())
            if data is not None:
                sender.send(data)
        except OSError:
            self.send_errors += 1
        except Exception:
            self.send_errors += 1
            _log.exception("rtp: a talkspurt's early packet failed")

    def _schedule(self) -> None:
        self._handle = self._loop.call_at(self.pacer.next_deadline(), self._on_timer)

    def _on_timer(self) -> None:
        self._handle = None
        now = self._loop.time()
        late = now - self.pacer.next_deadline()
        if late > self.LATE_WAKEUP:
            self.late_wakeups += 1
            self.max_lateness = max(self.max_lateness, late)
        if self._diagnose:
            self._diagnosis(now, late)
        # Every sub-slot already due is sent now, not one per loop iteration: when the loop
        # is busy (a GPU batch's chunks arriving together), each iteration ran one sub-slot
        # and its other work, so the lateness grew from slot to slot (H100, 128 live calls:
        # 10 -> 17 ms over five ticks, SIP_TTS_PACER_DIAG); caught up here, it stays at
        # one iteration's work.
        for _ in range(self.pacer.phases):
            packets, done = self.pacer.on_tick(now)
            for sender, data in packets:
                try:
                    sender.send(data)
                except OSError:
                    self.send_errors += 1
            for sender in done:
                sender.queue.on_ready = None
                if sender.on_done is not None:
                    sender.on_done()
            if not len(self.pacer) or self.pacer.next_deadline() > now:
                break
        if len(self.pacer):
            self._schedule()

    def enable_diagnosis(self) -> None:
        """Log every late wake-up with the loop thread's run / run-queue / sleep split (Linux)."""
        self._diagnose = Path(_SCHEDSTAT).exists()
        if not self._diagnose:
            _log.warning("pacer diagnosis needs %s (Linux); not enabled", _SCHEDSTAT)

    def _diagnosis(self, now: float, late: float) -> None:
        ran, waited = _thread_schedstat()
        last, self._last = self._last, (now, ran, waited)
        if last is None or late <= self.LATE_WAKEUP:
            # Other threads' counters are read every OTHERS_EVERY, not every tick: reading them
            # (one /proc file a thread, every 2 ms) was most of the loop's work with the
            # diagnosis on (py-spy, H100, 128 live calls), so it overstated the loop's load.
            if now - self._others_at >= self.OTHERS_EVERY:
                self._others, self._others_at = _others_ran(), now
            return
        others, before, since = _others_ran(), self._others, self._others_at
        self._others, self._others_at = others, now
        wall = now - last[0]
        ran_s, waited_s = (ran - last[1]) / 1e9, (waited - last[2]) / 1e9
        names = {t.native_id: t.name for t in threading.enumerate()}
        busy = sorted(((ns - before.get(tid, ns)) / 1e6, names.get(tid, f"thread {tid}"))
                      for tid, ns in others.items())
        busy_text = ", ".join(f"{name} {ms:.1f} ms" for ms, name in reversed(busy) if ms >= 0.5) or "none"
        _log.warning("pacer woke %.1f ms late: since the last tick (%.1f ms) the loop thread ran %.1f ms, "
                     "waited for a CPU %.1f ms, slept %.1f ms; other threads ran (in the last %.0f ms): %s",
                     late * 1e3, wall * 1e3, ran_s * 1e3, waited_s * 1e3, max(0.0, wall - ran_s - waited_s) * 1e3,
                     (now - since) * 1e3, busy_text)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
