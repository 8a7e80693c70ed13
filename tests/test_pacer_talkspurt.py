"""The talkspurt re-phase (``Pacer.talkspurt``, ``PacerClock``): speech after silence is sent as
soon as it is queued, not at the call's next 20 ms slot. Sans-IO: time is an input, no sockets."""

import pytest

from telephony.rtp.packet import RtpPacket
from telephony.rtp.pacer import FRAME_SAMPLES, FrameQueue, Pacer, RtpSender
from tests.test_rtp import FakeLoop

SUB = 0.002  # a sub-slot with 10 phases
SPEECH = b"\x10" * 160


def _sender() -> tuple[RtpSender, list[bytes]]:
    out: list[bytes] = []
    return RtpSender(0, "PCMU", out.append, FrameQueue(0xFF)), out


def _run(pacer: Pacer, until: float) -> list[tuple[float, RtpSender, RtpPacket]]:
    """Every sub-slot due up to ``until``, each on time: (slot time, sender, packet)."""
    sent = []
    while pacer.next_deadline() <= until + 1e-9:
        due = pacer.next_deadline()
        packets, _ = pacer.on_tick(due)
        sent += [(due, s, RtpPacket.parse(d)) for s, d in packets]
    return sent


def test_speech_after_silence_goes_out_at_once_with_the_elapsed_timestamp_and_the_marker():
    pacer = Pacer(origin=0.0, phases=10)
    sender, _ = _sender()
    pacer.add(sender)  # phase 0: slots at 0, 20, 40 ms ...
    silence = _run(pacer, 0.0208)  # two silence packets (0 and 20 ms) and sub-slots 22..28 ms... up to 20.8
    assert [p.payload for _, _, p in silence] == [b"\xff" * 160] * 2 and sender.idle
    last = silence[-1][2]
    _run(pacer, 0.0281)  # sub-slots up to 28 ms served: nothing for this call
    sender.queue.push(SPEECH)  # audio ready at 28.5 ms (its next slot would be 40 ms)
    data = pacer.talkspurt(sender, 0.0285)
    assert data is not None
    first = RtpPacket.parse(data)
    assert first.payload == SPEECH and first.marker
    assert (first.sequence - last.sequence) % 65536 == 1
    assert (first.timestamp - last.timestamp) % 2**32 == 64  # 28 - 20 ms: 64 samples, not 160
    assert abs((first.timestamp - last.timestamp) / 8000 - (0.0285 - 0.020)) < SUB  # within a sub-slot of wall time
    assert pacer.phase_of(sender) == 4 and sender.talkspurts == 1 and pacer.rephased == 1
    for k in range(3):
        sender.queue.push(SPEECH)
    after = _run(pacer, 0.1)
    times = [t for t, s, _ in after if s is sender]
    assert times[:3] == pytest.approx([0.048, 0.068, 0.088])  # absolute 20 ms deadlines from the new phase
    stamps = [p.timestamp for _, s, p in after if s is sender]
    assert [(b - a) % 2**32 for a, b in zip([first.timestamp] + stamps, stamps)] == [160] * len(stamps)
    assert not any(p.marker for _, _, p in after)
    assert [p.payload for _, _, p in after][:3] == [SPEECH] * 3


def test_silence_sent_in_the_slot_just_served_moves_speech_to_the_next_sub_slot():
    """Its silence went out in the last sub-slot: its speech cannot take that sub-slot again
    (two packets in one slot); the next sub-slot's tick sends it, 2 ms later, timestamp +16."""
    pacer = Pacer(origin=0.0, phases=10)
    sender, _ = _sender()
    pacer.add(sender)
    last = _run(pacer, 0.0)[-1][2]  # its silence at 0 ms, the sub-slot just served
    sender.queue.push(SPEECH)
    assert pacer.talkspurt(sender, 0.0005) is None
    assert pacer.phase_of(sender) == 1
    sender.queue.flush()  # cleared before that tick, and audio again: still not the sub-slot it sent in
    sender.queue.push(SPEECH)
    assert pacer.talkspurt(sender, 0.0008) is None and pacer.phase_of(sender) == 1
    (due, _, first), = _run(pacer, 0.002)
    assert due == pytest.approx(0.002) and first.marker and first.payload == SPEECH
    assert (first.timestamp - last.timestamp) % 2**32 == 16


def test_no_rephase_in_the_middle_of_speech_or_on_hold():
    pacer = Pacer(origin=0.0, phases=10)
    sender, _ = _sender()
    pacer.add(sender)
    sender.queue.push(SPEECH)
    first = _run(pacer, 0.005)[0][2]  # speech at 0 ms; the queue is dry now
    sender.queue.push(SPEECH)  # the next frame comes before its slot: no gap, no re-phase
    assert pacer.talkspurt(sender, 0.006) is None and pacer.phase_of(sender) == 0
    second = [p for _, _, p in _run(pacer, 0.030)][0]
    assert (second.timestamp - first.timestamp) % 2**32 == FRAME_SAMPLES and not second.marker
    _run(pacer, 0.040)  # silence at 40 ms
    sender.paused = True
    sender.queue.push(SPEECH)
    assert pacer.talkspurt(sender, 0.045) is None and pacer.phase_of(sender) == 0


def test_a_new_stream_with_audio_ready_sends_at_once():
    pacer = Pacer(origin=0.0, phases=10)
    _run(pacer, 0.0131)  # the clock has served up to 12 ms
    sender, _ = _sender()
    pacer.add(sender)
    sender.queue.push(SPEECH)
    first = RtpPacket.parse(pacer.talkspurt(sender, 0.0135))
    assert first.marker and first.payload == SPEECH
    assert pacer.phase_of(sender) == 6  # the sub-slot at 12 ms
    sender.queue.push(SPEECH)
    assert [t for t, s, _ in _run(pacer, 0.04) if s is sender] == pytest.approx([0.032])


def test_calls_starting_together_keep_the_bursts_spread_and_none_is_later_than_before():
    """100 idle calls whose audio arrives in one instant (one GPU batch): a phase takes re-phased
    calls only up to its cap; the rest take the next sub-slots with room, each no later than its
    own old slot; after it, no wake-up sends more than the cap."""
    pacer = Pacer(origin=0.0, phases=10)
    senders = [_sender()[0] for _ in range(100)]
    for s in senders:
        pacer.add(s)
    _run(pacer, 0.0441)  # two frames of silence each, and sub-slots up to 44 ms
    old_next = {id(s): 0.040 + (pacer.phase_of(s) or 0) * SUB for s in senders}
    old_next = {k: (t if t > 0.0441 else t + 0.020) for k, t in old_next.items()}
    now_sent = []
    for s in senders:
        s.queue.push(SPEECH * 3)
        data = pacer.talkspurt(s, 0.0445)
        if data is not None:
            now_sent.append(s)
    cap = pacer.rephase_cap
    assert 3 <= len(now_sent) <= cap  # the sub-slot at 44 ms (10 calls) takes re-phased ones up to its cap
    assert max(pacer.group_sizes()) <= cap
    first_at = {id(s): 0.0445 for s in now_sent}
    for t, s, p in _run(pacer, 0.2):
        if p.payload == SPEECH and id(s) not in first_at:
            first_at[id(s)] = t
            assert p.marker
    assert len(first_at) == 100
    assert all(first_at[k] <= old_next[k] + 1e-9 for k in first_at)
    bursts = {}
    for t, s, _ in _run(pacer, 0.3):
        bursts[round(t, 4)] = bursts.get(round(t, 4), 0) + 1
    assert max(bursts.values()) <= cap


def test_the_clock_sends_on_the_push_and_keeps_timestamps_true_to_wall_time():
    """``PacerClock`` on injected time: a live call's silence, then audio pushed between two
    slots goes out within the push (no timer), marked; consecutive packets' timestamp steps agree
    with their send times within a sub-slot, and the 20 ms grid goes on from the new phase."""
    from telephony.rtp.pacer import PacerClock

    loop = FakeLoop(100.0)
    clock = PacerClock(loop)
    sent: list[tuple[float, RtpPacket]] = []
    q = FrameQueue(0xFF)
    clock.add(RtpSender(0, "PCMU", lambda d: sent.append((loop.time(), RtpPacket.parse(d))), q))
    while loop.now < 100.0695:
        loop.fire_next()
    n = len(sent)
    assert n >= 3 and all(p.payload == b"\xff" * 160 for _, p in sent)
    loop.now = loop_at = sent[-1][0] + 0.0113  # audio arrives 11.3 ms after the last silence packet
    q.push(SPEECH * 5)
    assert len(sent) == n + 1 and sent[-1][0] == loop.now and sent[-1][1].marker  # sent in the push
    for _ in range(60):
        loop.fire_next()
    times = [t for t, _ in sent]
    stamps = [p.timestamp for _, p in sent]
    for (t0, s0), (t1, s1) in zip(zip(times, stamps), zip(times[1:], stamps[1:])):
        assert abs((s1 - s0) % 2**32 - (t1 - t0) * 8000) < 16 + 1e-6
    speech = [t for t, p in sent if p.payload == SPEECH]
    assert len(speech) == 5 and speech[0] == loop_at
    assert 0.020 - SUB <= speech[1] - speech[0] <= 0.020  # the first was sent up to a sub-slot after its slot
    assert all(abs(b - a - 0.020) < 1e-9 for a, b in zip(speech[1:], speech[2:]))  # then the new grid
    step = (sent[n][1].timestamp - sent[n - 1][1].timestamp) % 2**32
    assert step % 16 == 0 and 0.0113 * 8000 - 16 < step <= 0.0113 * 8000  # the sub-slot at hand, not 160
    clock.close()


def test_streams_joining_with_audio_ready_stay_balanced_over_the_phases():
    """A thousand calls join at once with their prompts queued (rtp_pacing's case): each goes out at
    once only into a phase below the average and one, so the phases stay as ``add`` balances them."""
    from telephony.rtp.pacer import PacerClock

    loop = FakeLoop(100.0)
    clock = PacerClock(loop)
    sent = []
    for _ in range(1000):
        q = FrameQueue(0xFF)
        q.push_frames([SPEECH] * 5)
        clock.add(RtpSender(0, "PCMU", sent.append, q))
    sizes = clock.pacer.group_sizes()
    assert max(sizes) <= 101 and min(sizes) >= 99, sizes
    assert 90 <= len(sent) <= 101  # the phase at hand's share went out at once, the rest at their slots
    clock.close()



def test_no_wakeup_sends_more_than_the_cap_when_many_calls_start_speaking_at_once():
    """Forty idle calls per phase (400: the cap is the average plus a quarter), all with audio at the
    same instant: the phases at hand take re-phased calls up to the cap, the rest keep their slots."""
    pacer = Pacer(origin=0.0, phases=10)
    senders = [_sender()[0] for _ in range(400)]
    for s in senders:
        pacer.add(s)
    _run(pacer, 0.0411)
    for s in senders:
        s.queue.push(SPEECH * 3)
        pacer.talkspurt(s, 0.0415)
    cap = pacer.rephase_cap
    assert cap == 51 and max(pacer.group_sizes()) <= cap, pacer.group_sizes()
    bursts = {}
    for t, _, _ in _run(pacer, 0.2):
        bursts[round(t, 4)] = bursts.get(round(t, 4), 0) + 1
    assert max(bursts.values()) <= cap
