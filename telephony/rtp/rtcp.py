"""RTCP (RFC 3550 §6): our sender reports, the caller's reports, and receive statistics.

Packets are dataclasses with ``serialize``/``parse``. ``ReceiveStats`` keeps the
loss and interarrival-jitter bookkeeping of RFC 3550 Appendix A.1/A.3/A.8 for
the caller's stream, fed with sequence numbers, RTP timestamps and arrival times.
``report_interval`` is the randomised interval of §6.3.1 for a two-party session.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

PT_SR, PT_RR, PT_SDES, PT_BYE = 200, 201, 202, 203
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900 to 1970
MIN_INTERVAL = 5.0
COMPENSATION = 2.71828 - 1.5  # e - 3/2 (RFC 3550 §6.3.1)


class RtcpError(ValueError):
    pass


@dataclass(frozen=True)
class ReportBlock:
    ssrc: int
    fraction_lost: int  # of 256
    cumulative_lost: int
    highest_seq: int  # extended
    jitter: int  # in RTP timestamp units
    lsr: int = 0
    dlsr: int = 0

    def serialize(self) -> bytes:
        lost = self.cumulative_lost & 0xFFFFFF
        return struct.pack("!IIIIII", self.ssrc, (self.fraction_lost << 24) | lost, self.highest_seq,
                           self.jitter, self.lsr, self.dlsr)

    @classmethod
    def parse(cls, data: bytes) -> "ReportBlock":
        ssrc, lost_word, seq, jitter, lsr, dlsr = struct.unpack("!IIIIII", data[:24])
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000  # signed 24-bit
        return cls(ssrc, lost_word >> 24, lost, seq, jitter, lsr, dlsr)


@dataclass
class SenderReport:
    ssrc: int
    ntp_seconds: float  # wall clock (Unix time)
    rtp_timestamp: int
    packets: int
    octets: int
    blocks: list[ReportBlock] = field(default_factory=list)

    def serialize(self) -> bytes:
        ntp = self.ntp_seconds + NTP_EPOCH_OFFSET
        msw = int(ntp) & 0xFFFFFFFF
        lsw = int((ntp - int(ntp)) * (1 << 32)) & 0xFFFFFFFF
        body = struct.pack("!IIIIII", self.ssrc, msw, lsw, self.rtp_timestamp & 0xFFFFFFFF,
                           self.packets & 0xFFFFFFFF, self.octets & 0xFFFFFFFF)
        body += b"".join(b.serialize() for b in self.blocks)
        return _header(PT_SR, len(self.blocks), body) + body


@dataclass
class ReceiverReport:
    ssrc: int
    blocks: list[ReportBlock] = field(default_factory=list)


def _header(pt: int, count: int, body: bytes) -> bytes:
    return struct.pack("!BBH", 0x80 | count, pt, (len(body) + 4) // 4 - 1)


def sdes_cname(ssrc: int, cname: str) -> bytes:
    item = bytes([1, len(cname)]) + cname.encode()
    chunk = struct.pack("!I", ssrc) + item + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return _header(PT_SDES, 1, chunk) + chunk


def bye(ssrc: int) -> bytes:
    body = struct.pack("!I", ssrc)
    return _header(PT_BYE, 1, body) + body


def parse_compound(data: bytes) -> list[SenderReport | ReceiverReport]:
    """The SR and RR packets of a compound RTCP packet (other types skipped)."""
    out: list[SenderReport | ReceiverReport] = []
    off = 0
    while off + 4 <= len(data):
        first, pt, words = struct.unpack_from("!BBH", data, off)
        if first >> 6 != 2:
            raise RtcpError("not RTCP version 2")
        end = off + (words + 1) * 4
        if end > len(data):
            raise RtcpError("truncated RTCP packet")
        count = first & 0x1F
        body = data[off + 4:end]
        if pt == PT_SR and len(body) >= 24 + 24 * count:
            ssrc, msw, lsw, rtp_ts, packets, octets = struct.unpack_from("!IIIIII", body)
            blocks = [ReportBlock.parse(body[24 + 24 * i:48 + 24 * i]) for i in range(count)]
            out.append(SenderReport(ssrc, msw - NTP_EPOCH_OFFSET + lsw / (1 << 32), rtp_ts, packets, octets, blocks))
        elif pt == PT_RR and len(body) >= 4 + 24 * count:
            (ssrc,) = struct.unpack_from("!I", body)
            out.append(ReceiverReport(ssrc, [ReportBlock.parse(body[4 + 24 * i:28 + 24 * i]) for i in range(count)]))
        off = end
    return out


def report_interval(rng: random.Random | None = None) -> float:
    """Randomised report interval for a two-party session (RFC 3550 §6.3.1, minimum 5 s)."""
    r = rng or random
    return MIN_INTERVAL * r.uniform(0.5, 1.5) / COMPENSATION


@dataclass
class ReceiveStats:
    """Loss and jitter of one incoming RTP stream (RFC 3550 A.1, A.3, A.8)."""

    clock_rate: int = 8000
    ssrc: int | None = None
    base_seq: int = 0
    max_seq: int = 0
    cycles: int = 0
    received: int = 0
    jitter: float = 0.0  # in timestamp units
    _transit: float | None = None
    _expected_prior: int = 0
    _received_prior: int = 0

    def feed(self, ssrc: int, seq: int, timestamp: int, arrival: float) -> None:
        if self.ssrc != ssrc:  # first packet, or the caller restarted its stream
            self.ssrc, self.base_seq, self.max_seq, self.cycles, self.received = ssrc, seq, seq, 0, 0
            self._transit = None
            self._expected_prior = self._received_prior = 0
        delta = (seq - self.max_seq) & 0xFFFF
        if delta < 0x8000:  # in order, perhaps with a gap
            if seq < self.max_seq:
                self.cycles += 1 << 16
            self.max_seq = seq
        self.received += 1
        transit = arrival * self.clock_rate - timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            self.jitter += (d - self.jitter) / 16.0
        self._transit = transit

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self.base_seq + 1 if self.ssrc is not None else 0

    @property
    def lost(self) -> int:
        return self.expected - self.received

    @property
    def jitter_ms(self) -> float:
        return self.jitter * 1000.0 / self.clock_rate

    def report_block(self) -> ReportBlock | None:
        if self.ssrc is None:
            return None
        expected_interval = self.expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior, self._received_prior = self.expected, self.received
        lost_interval = expected_interval - received_interval
        fraction = (lost_interval << 8) // expected_interval if expected_interval > 0 and lost_interval > 0 else 0
        return ReportBlock(self.ssrc, min(fraction, 255), max(min(self.lost, 0x7FFFFF), -0x800000),
                           self.extended_max & 0xFFFFFFFF, int(self.jitter))
