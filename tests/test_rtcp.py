import random
import struct

import pytest

from telephony.rtp.rtcp import (
    PT_RR, PT_SR, ReceiveStats, ReceiverReport, ReportBlock, RtcpError, SenderReport, bye, parse_compound,
    report_interval, sdes_cname,
)


def test_sender_report_roundtrip_with_a_block():
    block = ReportBlock(0xCAFE, 12, 3, 70000, 42)
    sr = SenderReport(0xBEEF, 1_795_000_000.25, 123456, 50, 8000, [block])
    data = sr.serialize() + sdes_cname(0xBEEF, "sip-tts@host") + bye(0xBEEF)
    assert data[1] == PT_SR and len(data) % 4 == 0
    (parsed,) = parse_compound(data)
    assert isinstance(parsed, SenderReport)
    assert parsed.ssrc == 0xBEEF and parsed.rtp_timestamp == 123456 and parsed.packets == 50
    assert parsed.ntp_seconds == pytest.approx(1_795_000_000.25, abs=1e-6)
    assert parsed.blocks == [block]


def test_receiver_report_parse_and_negative_cumulative_loss():
    block = ReportBlock(7, 0, -2, 100, 5)  # duplicates make cumulative loss negative
    body = struct.pack("!I", 99) + block.serialize()
    data = struct.pack("!BBH", 0x81, PT_RR, (len(body) + 4) // 4 - 1) + body
    (rr,) = parse_compound(data)
    assert isinstance(rr, ReceiverReport) and rr.ssrc == 99 and rr.blocks == [block]
    with pytest.raises(RtcpError):
        parse_compound(b"\x00" * 8)
    with pytest.raises(RtcpError):
        parse_compound(data[:-4])


def test_interval_randomised_around_five_seconds():
    rng = random.Random(1)
    values = [report_interval(rng) for _ in range(1000)]
    assert 2.0 < min(values) and max(values) < 6.2
    assert len({round(v, 3) for v in values}) > 900


def test_receive_stats_loss_and_jitter():
    st = ReceiveStats()
    t = 0.0
    for seq in list(range(65530, 65536)) + list(range(0, 10)):
        if seq in (2, 3):
            continue  # two lost
        st.feed(0x1234, seq, (seq + 6) % 65536 * 160 if seq < 100 else (seq - 65530) * 160, t + (seq % 65536) * 0)
        t += 0.020
    assert st.expected == 16 and st.received == 14 and st.lost == 2
    block = st.report_block()
    assert block.cumulative_lost == 2 and block.fraction_lost == (2 << 8) // 16
    assert block.highest_seq == (1 << 16) + 9


def test_jitter_of_a_steady_stream_is_zero_and_grows_with_variation():
    steady = ReceiveStats()
    shaky = ReceiveStats()
    rng = random.Random(3)
    for k in range(500):
        steady.feed(1, k, k * 160, k * 0.020)
        shaky.feed(1, k, k * 160, k * 0.020 + rng.uniform(0, 0.010))
    assert steady.jitter_ms == pytest.approx(0, abs=1e-6)
    assert 2.0 < shaky.jitter_ms < 5.0  # uniform 0-10 ms: mean |D| about 3.3 ms
