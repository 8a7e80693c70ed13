import numpy as np
import pytest

from telephony.rtp.packet import RtpError, RtpPacket
from telephony.rtp.pacer import FRAME_SAMPLES, FrameQueue, Pacer, RtpSender


def test_packet_roundtrip_and_header_bits():
    p = RtpPacket(0, 65535, 2**32 - 1, 0xDEADBEEF, b"\xff" * 160, marker=True)
    data = p.serialize()
    assert len(data) == 172
    assert data[0] == 0x80 and data[1] == 0x80  # V=2, M=1, PT=0
    assert RtpPacket.parse(data) == p


def test_parse_csrc_extension_padding():
    head = bytes([0x80 | 0x20 | 0x10 | 1, 8]) + (7).to_bytes(2, "big") + (1).to_bytes(4, "big") + (9).to_bytes(4, "big")
    csrc = (5).to_bytes(4, "big")
    ext = b"\xbe\xde\x00\x01" + b"\x00" * 4
    pkt = RtpPacket.parse(head + csrc + ext + b"abc" + b"\x00\x02")
    assert pkt.csrcs == [5] and pkt.payload == b"abc" and pkt.payload_type == 8
    with pytest.raises(RtpError):
        RtpPacket.parse(b"\x80\x00")
    with pytest.raises(RtpError):
        RtpPacket.parse(b"\x40" + b"\x00" * 11)


def test_frame_queue_cuts_and_pads():
    q = FrameQueue(0xFF)
    q.push(b"\x01" * 100)
    assert len(q) == 0
    q.push(b"\x02" * 300)
    assert len(q) == 2
    q.finish()
    frames = [q.pop(), q.pop(), q.pop()]
    assert frames[0] == b"\x01" * 100 + b"\x02" * 60
    assert frames[2] == b"\x02" * 80 + b"\xff" * 80
    assert q.exhausted


def make_sender(frames, codec="PCMU"):
    q = FrameQueue(0xFF)
    for f in frames:
        q.push(f)
    q.finish()
    out = []
    return RtpSender(0, codec, out.append, q), out


def test_sequence_timestamp_and_marker():
    sender, _ = make_sender([b"\x10" * 160] * 3)
    pacer = Pacer(origin=100.0)
    pacer.add(sender)
    pkts = []
    for k in range(3):
        packets, done = pacer.on_tick(pacer.next_deadline())
        pkts += [RtpPacket.parse(d) for _, d in packets]
    assert [p.marker for p in pkts] == [True, False, False]
    assert [(p.sequence - pkts[0].sequence) % 65536 for p in pkts] == [0, 1, 2]
    assert [(p.timestamp - pkts[0].timestamp) % 2**32 for p in pkts] == [0, 160, 320]
    assert len({p.ssrc for p in pkts}) == 1
    packets, done = pacer.on_tick(pacer.next_deadline())
    assert packets == [] and done == [sender] and len(pacer) == 0


def test_deadlines_are_absolute():
    pacer = Pacer(origin=10.0)
    pacer.add(make_sender([b"\x00" * 160] * 100)[0])
    for k in range(50):
        due = pacer.next_deadline()
        assert due == pytest.approx(10.0 + 0.02 * k)
        pacer.on_tick(due + 0.004)  # fired 4 ms late: the next deadline does not drift


def test_stall_skips_slots_without_a_burst_and_keeps_timestamps_true():
    sender, _ = make_sender([b"\x00" * 160] * 100)
    pacer = Pacer(origin=0.0)
    pacer.add(sender)
    first = RtpPacket.parse(pacer.on_tick(0.0)[0][0][1])
    packets, _ = pacer.on_tick(0.125)  # the loop stalled for 105 ms past the 20 ms deadline
    assert len(packets) == 1  # one packet, not six
    second = RtpPacket.parse(packets[0][1])
    assert (second.timestamp - first.timestamp) == 6 * FRAME_SAMPLES  # slot at 120 ms
    assert (second.sequence - first.sequence) == 1  # no sequence gap
    assert pacer.skipped_slots == 5 and sender.skipped_frames == 5
    assert pacer.next_deadline() == pytest.approx(0.14)


def test_silence_when_audio_is_not_ready():
    q = FrameQueue(0xD5)
    sender = RtpSender(8, "PCMA", lambda d: None, q)
    pkt = RtpPacket.parse(sender.next_packet(0.0))
    assert pkt.payload == b"\xd5" * 160 and sender.silence_frames == 1
    q.push(b"\x01" * 160)
    pkt = RtpPacket.parse(sender.next_packet(0.02))
    assert pkt.payload == b"\x01" * 160 and sender.first_audio_at == 0.02


def test_phases_spread_calls_over_the_frame_and_keep_each_on_its_20ms_grid():
    pacer = Pacer(origin=0.0, phases=10)
    senders = [make_sender([b"\x10" * 160] * 50)[0] for _ in range(100)]
    for s in senders:
        pacer.add(s)
    sent: dict[int, list[float]] = {}
    bursts = []
    for _ in range(10 * 20):  # 20 frames of 10 sub-slots
        due = pacer.next_deadline()
        packets, _ = pacer.on_tick(due + 0.0003)  # each wake-up a little late: no drift
        bursts.append(len(packets))
        for sender, _data in packets:
            sent.setdefault(id(sender), []).append(due)
    assert max(bursts) == 10  # 100 calls over 10 phases: 10 packets per wake-up, not 100
    assert len(sent) == 100
    for times in sent.values():
        assert len(times) == 20
        assert np.allclose(np.diff(times), 0.020)  # every call exactly every 20 ms
    assert len({round(t[0] % 0.020, 4) for t in sent.values()}) == 10  # on ten different phases


def test_a_stall_skips_whole_frames_per_phase_never_a_burst():
    pacer = Pacer(origin=0.0, phases=4)
    sender, _ = make_sender([b"\x10" * 160] * 20)
    pacer.add(sender)
    first = RtpPacket.parse(pacer.on_tick(0.0)[0][0][1])
    for _ in range(3):
        assert pacer.on_tick(pacer.next_deadline())[0] == []  # the other phases: nothing for this call
    packets, _ = pacer.on_tick(pacer.next_deadline() + 0.065)  # stalled 65 ms: 3 frames lost
    assert len(packets) == 1
    second = RtpPacket.parse(packets[0][1])
    assert (second.timestamp - first.timestamp) % 2**32 == 160 * 4  # the timestamp follows wall time
    assert sender.skipped_frames == 3 and pacer.skipped_slots == 3


class FakeLoop:
    """The two things ``PacerClock`` asks of an event loop (``time``, ``call_at``), on injected time:
    the test decides when each timer fires, so lateness is a number it sets, not the host's load."""

    class Handle:
        def __init__(self, when, callback):
            self.when, self.callback, self.cancelled = when, callback, False

        def cancel(self):
            self.cancelled = True

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.timers: list[FakeLoop.Handle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when, callback):
        handle = FakeLoop.Handle(when, callback)
        self.timers.append(handle)
        return handle

    def fire_next(self, late: float = 0.0) -> bool:
        """Run the earliest live timer ``late`` seconds after it was due; False when none is left."""
        live = [h for h in self.timers if not h.cancelled]
        if not live:
            return False
        handle = min(live, key=lambda h: h.when)
        self.timers.remove(handle)
        self.now = max(self.now, handle.when + late)
        handle.callback()
        return True


def clock_with_senders(loop: FakeLoop, calls: int, frames: int) -> tuple[object, dict[int, list[float]]]:
    from telephony.rtp.pacer import PacerClock

    clock = PacerClock(loop)
    sent: dict[int, list[float]] = {i: [] for i in range(calls)}
    clock.stamps = {i: [] for i in range(calls)}  # RTP timestamps, beside the send times

    def send(data: bytes, i: int) -> None:
        sent[i].append(loop.time())
        clock.stamps[i].append(RtpPacket.parse(data).timestamp)

    for i in range(calls):
        q = FrameQueue(0xFF)
        q.push_frames([b"\x00" * 160] * frames)
        q.finish()
        clock.add(RtpSender(i, "PCMU", lambda data, i=i: send(data, i), q))
    return clock, sent


def test_pacer_clock_catches_up_when_the_loop_is_busy():
    """Every wake-up 3 ms late (the loop busy for longer than a 2 ms sub-slot): each wake-up sends
    every sub-slot already due, so a packet is never more than one wake-up's lateness behind its
    slot and lateness does not pile up tick after tick (it did when each wake-up ran one sub-slot)."""
    loop = FakeLoop(100.0)
    clock, sent = clock_with_senders(loop, calls=20, frames=30)
    wakeups = 0
    while loop.fire_next(late=0.003):
        wakeups += 1
    assert all(len(v) == 30 for v in sent.values())
    gaps = [b - a for v in sent.values() for a, b in zip(v, v[1:])]
    assert max(gaps) <= 0.020 + 0.003 + 1e-9, max(gaps)
    assert min(gaps) >= 0.020 - 0.003 - 1e-9, min(gaps)
    assert clock.late_wakeups == 0 and clock.pacer.skipped_slots == 0
    # fewer wake-ups than sub-slots: late ones took the next sub-slot's packets along
    assert wakeups < 30 * clock.pacer.phases


def test_pacer_clock_counts_a_late_wakeup_and_skips_the_stalled_frames():
    """One wake-up 45 ms late: it is counted (``late_wakeups``, ``max_lateness``); the two whole frame
    slots the stall covered are skipped by every call on every phase (its RTP timestamp jumps by
    them, its audio is not sent in a burst to catch up), and the grid goes on after it."""
    loop = FakeLoop(0.0)
    clock, sent = clock_with_senders(loop, calls=10, frames=20)
    while not all(sent.values()):  # one frame on time: every call's first packet (some at once: audio was ready)
        loop.fire_next()
    assert clock.late_wakeups == 0 and all(len(v) == 1 for v in sent.values())
    loop.fire_next(late=0.045)
    assert clock.late_wakeups == 1 and clock.max_lateness == pytest.approx(0.045)
    while loop.fire_next():
        pass
    assert clock.pacer.skipped_slots == 2
    for i, times in sent.items():
        # every call's RTP timestamp jumped by the two lost frames, whichever phase it is on
        # (not only the phase due at the late wake-up): timestamps stay true to wall time
        stamps = np.array(clock.stamps[i], dtype=np.int64)
        wall = (np.array(times) - times[0]) * 8000
        assert np.abs((stamps - stamps[0]) - wall).max() <= 0.005 * 8000 + 1e-6, i  # the late packet: 5 ms
        assert len(times) == 20  # every frame of audio still played, none dropped, none doubled
        gaps = np.diff(times)
        assert gaps.min() >= 0.015 - 1e-9  # no burst after the stall (the late packet was 5 ms off its grid)
        assert gaps.max() <= 0.020 * 3 + 0.005 + 1e-9  # the stall: two slots skipped, 5 ms late
        off_grid = np.abs((np.array(times) - times[0]) / 0.020 - np.round((np.array(times) - times[0]) / 0.020))
        assert (off_grid > 1e-6).sum() <= 1  # all but the one late packet on the call's own 20 ms grid


def test_pacer_clock_says_where_the_time_went_when_the_loop_thread_is_busy(caplog):
    """A callback that holds the real loop 40 ms: the pacing tick after it is counted late, and the
    diagnosis (Linux schedstat) attributes the time to the loop thread being runnable (running or
    waiting for a CPU), not asleep. Wall-clock, with wide margins: on a loaded host the spinning
    thread may wait for a CPU instead of running, so the claim is on ran + waited, not ran alone."""
    import asyncio
    import logging
    import os
    import time

    from telephony.rtp.pacer import PacerClock

    if not os.path.exists("/proc/thread-self/schedstat"):
        pytest.skip("the diagnosis reads Linux schedstat")

    async def main():
        loop = asyncio.get_running_loop()
        clock = PacerClock(loop)
        clock.enable_diagnosis()
        sender, out = make_sender([b"\x00" * 160] * 40)
        clock.add(sender)
        await asyncio.sleep(0.1)
        before = len(out)
        end = time.perf_counter() + 0.04
        while time.perf_counter() < end:  # busy: the loop thread runs (or waits for a CPU)
            pass
        await asyncio.sleep(0.1)
        clock.close()
        return before, clock, out

    with caplog.at_level(logging.WARNING, logger="telephony.rtp.pacer"):
        before, clock, out = asyncio.run(main())
    assert clock.late_wakeups >= 1 and clock.max_lateness >= 0.03
    assert len(out) > before  # it kept sending after the stall
    lines = [r.getMessage() for r in caplog.records if "woke" in r.getMessage()]
    assert lines, "no diagnosis logged"
    busy = max(float(line.split("ran ")[1].split(" ms")[0]) + float(line.split("waited for a CPU ")[1].split(" ms")[0])
               for line in lines)
    assert busy >= 30, lines
