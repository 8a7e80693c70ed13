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


def test_pacer_clock_counts_late_wakeups_and_says_where_the_time_went(caplog):
    """A callback that holds the loop 40 ms: the pacing tick after it is counted late, and the
    diagnosis (Linux schedstat) attributes the time to the loop thread running, not sleeping."""
    import asyncio
    import logging
    import os
    import time

    from telephony.rtp.pacer import PacerClock

    async def main():
        loop = asyncio.get_running_loop()
        clock = PacerClock(loop)
        clock.enable_diagnosis()
        sender, out = make_sender([b"\x00" * 160] * 40)
        clock.add(sender)
        await asyncio.sleep(0.1)  # on time
        on_time = clock.late_wakeups
        end = time.perf_counter() + 0.04
        while time.perf_counter() < end:  # busy: the loop thread runs, nobody else can
            pass
        await asyncio.sleep(0.1)
        clock.close()
        return on_time, clock, out

    with caplog.at_level(logging.WARNING, logger="telephony.rtp.pacer"):
        on_time, clock, out = asyncio.run(main())
    assert clock.late_wakeups > on_time and clock.max_lateness >= 0.03
    assert len(out) >= 8  # it kept sending
    if os.path.exists("/proc/thread-self/schedstat"):
        lines = [r.getMessage() for r in caplog.records if "woke" in r.getMessage()]
        assert lines, "no diagnosis logged"
        ran = float(lines[0].split("ran ")[1].split(" ms")[0])
        assert ran >= 30, lines[0]


def test_pacer_clock_catches_up_when_the_loop_is_busy():
    """Other work holding each loop iteration 3 ms (more than a 2 ms sub-slot) for 150 ms: every
    packet still goes out within a few ms of its slot; lateness does not pile up tick after tick."""
    import asyncio
    import time

    from telephony.rtp.pacer import PacerClock

    async def main():
        loop = asyncio.get_running_loop()
        clock = PacerClock(loop)
        sent: dict[int, list[float]] = {}
        for i in range(20):
            q = FrameQueue(0xFF)
            for _ in range(30):
                q.push(b"\x00" * 160)
            q.finish()
            sent[i] = []
            clock.add(RtpSender(i, "PCMU", lambda data, i=i: sent[i].append(loop.time()), q))
        await asyncio.sleep(0.05)
        end = loop.time() + 0.15

        def busy() -> None:
            stop = time.perf_counter() + 0.003
            while time.perf_counter() < stop:
                pass
            if loop.time() < end:
                loop.call_soon(busy)

        busy()
        await asyncio.sleep(0.5)
        return clock, sent

    clock, sent = asyncio.run(main())
    assert all(len(v) >= 25 for v in sent.values())
    gaps = [b - a for v in sent.values() for a, b in zip(v, v[1:])]
    assert max(gaps) < 0.020 + 0.009, max(gaps)  # a packet at most one busy iteration late, no pile-up
    assert clock.max_lateness < 0.009, clock.max_lateness
