"""Per-stream checks of captured RTP: spacing, timestamps, sequence numbers."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from telephony.rtp.packet import RtpError, RtpPacket

from .pcap import UdpPacket


@dataclass
class StreamStats:
    ssrc: int
    packets: int
    seq_gaps: int  # steps other than +1
    ts_steps: set[int]  # distinct timestamp increments (into packets without the marker bit)
    markers: list[int]  # indices of packets with the marker bit
    intervals_ms: np.ndarray
    payload_types: set[int]
    payload: bytes
    ts_span: int = 0  # last timestamp - first, in samples (8 kHz)
    # Increments into marked packets: a talkspurt re-phased after silence steps by the time that
    # passed (under a frame, whole 2 ms sub-slots); a resume after hold by whole frames.
    talkspurt_steps: list[int] | None = None

    @property
    def median_ms(self) -> float:
        return float(np.median(self.intervals_ms))

    @property
    def p99_abs_dev_ms(self) -> float:
        return float(np.percentile(np.abs(self.intervals_ms - 20.0), 99))

    @property
    def on_grid_share(self) -> float:
        """Share of intervals within 5 ms of 20 ms."""
        return float((np.abs(self.intervals_ms - 20.0) <= 5.0).mean())

    @property
    def max_interval_ms(self) -> float:
        return float(self.intervals_ms.max())

    @property
    def mean_ms(self) -> float:
        return float(self.intervals_ms.mean())

    @property
    def clock_drift_ms(self) -> float:
        """Wall time the stream spanned minus what its RTP timestamps say: ~0 when timestamps follow
        the clock (through stalls too: skipped slots advance the timestamp)."""
        return float(self.intervals_ms.sum() - self.ts_span / 8.0)


def rtp_streams(packets: list[UdpPacket]) -> dict[int, StreamStats]:
    by_ssrc: dict[int, list[tuple[float, RtpPacket]]] = defaultdict(list)
    for p in packets:
        try:
            rtp = RtpPacket.parse(p.payload)
        except RtpError:
            continue
        by_ssrc[rtp.ssrc].append((p.time, rtp))
    out = {}
    for ssrc, items in by_ssrc.items():
        times = np.array([t for t, _ in items])
        seqs = [r.sequence for _, r in items]
        tss = [r.timestamp for _, r in items]
        out[ssrc] = StreamStats(
            ssrc=ssrc,
            packets=len(items),
            seq_gaps=sum(1 for a, b in zip(seqs, seqs[1:]) if (b - a) % 65536 != 1),
            ts_steps={(b - a) % 2**32 for a, b, (_, r) in zip(tss, tss[1:], items[1:]) if not r.marker},
            markers=[i for i, (_, r) in enumerate(items) if r.marker],
            intervals_ms=np.diff(times) * 1000.0,
            payload_types={r.payload_type for _, r in items},
            payload=b"".join(r.payload for _, r in items),
            ts_span=(tss[-1] - tss[0]) % 2**32,
            talkspurt_steps=[(b - a) % 2**32 for a, b, (_, r) in zip(tss, tss[1:], items[1:]) if r.marker],
        )
    return out
