import struct
from pathlib import Path

import pytest

from telephony.rtp.dtmf import DtmfDigit, Rfc4733Detector, parse_info
from telephony.rtp.packet import RtpPacket

SIPP_PCAPS = Path("/usr/share/sip-tester")


def ev(event, end, duration, volume=10):
    return struct.pack("!BBH", event, (0x80 if end else 0) | volume, duration)


def test_digit_reported_once_at_the_first_end_packet():
    d = Rfc4733Detector()
    out = []
    for dur in (160, 320, 480):
        out += d.feed(1000, ev(5, False, dur))
    for _ in range(3):  # the end packet, three times
        out += d.feed(1000, ev(5, True, 640))
    assert out == [DtmfDigit("5", 80, "rfc4733")]


def test_missing_marker_and_lost_end_packets():
    d = Rfc4733Detector()
    out = d.feed(1000, ev(1, False, 160)) + d.feed(1000, ev(1, False, 320))
    out += d.feed(3000, ev(11, False, 160))  # a new timestamp: the previous event ended unseen
    out += d.feed(3000, ev(11, True, 800))
    assert out == [DtmfDigit("1", 40, "rfc4733"), DtmfDigit("#", 100, "rfc4733")]
    assert d.feed(3000, ev(11, True, 800)) == []  # late retransmitted end
    d.feed(5000, ev(2, False, 160))
    assert d.flush() == [DtmfDigit("2", 20, "rfc4733")]


def test_events_above_15_ignored_and_48khz_clock():
    d = Rfc4733Detector(clock_rate=48000)
    assert d.feed(10, ev(16, True, 4800)) == []  # not a DTMF digit
    assert d.feed(20, ev(10, True, 4800)) == [DtmfDigit("*", 100, "rfc4733")]


def test_info_bodies():
    assert parse_info("application/dtmf-relay", b"Signal=9\r\nDuration=160\r\n") == DtmfDigit("9", 160, "info")
    assert parse_info("application/dtmf-relay", b"Signal=#\r\n") == DtmfDigit("#", 250, "info")
    assert parse_info("application/dtmf", b"5") == DtmfDigit("5", 250, "info")
    assert parse_info("application/dtmf", b"11") == DtmfDigit("#", 250, "info")
    assert parse_info("application/dtmf-relay", b"Signal=hello") is None
    assert parse_info("text/plain", b"5") is None


@pytest.mark.parametrize("digit", ["0", "1", "5", "9"])
def test_real_captures_from_sipp(digit):
    from sip_tests.pcap import read_udp

    path = SIPP_PCAPS / f"dtmf_2833_{digit}.pcap"
    if not path.exists():
        pytest.fail(f"{path} missing: run `make test` (it installs SIPp)")
    d = Rfc4733Detector()
    out = []
    for p in read_udp(path):
        rtp = RtpPacket.parse(p.payload)
        out += d.feed(rtp.timestamp, rtp.payload)
    assert out == [DtmfDigit(digit, 280, "rfc4733")]
