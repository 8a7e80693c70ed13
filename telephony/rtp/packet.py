"""RTP packets (RFC 3550 §5.1): fixed header, CSRCs, extension, padding."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RTP_VERSION = 2
RTP_HEADER_SIZE = 12
_HEADER = struct.Struct("!BBHII")


class RtpError(ValueError):
    pass


@dataclass
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrcs: list[int] = field(default_factory=list)

    def serialize(self) -> bytes:
        first = (RTP_VERSION << 6) | len(self.csrcs)
        second = (0x80 if self.marker else 0) | (self.payload_type & 0x7F)
        head = _HEADER.pack(first, second, self.sequence & 0xFFFF, self.timestamp & 0xFFFFFFFF, self.ssrc)
        return head + b"".join(struct.pack("!I", c) for c in self.csrcs) + self.payload

    @classmethod
    def parse(cls, data: bytes) -> "RtpPacket":
        if len(data) < RTP_HEADER_SIZE:
            raise RtpError("shorter than an RTP header")
        first, second, seq, ts, ssrc = _HEADER.unpack_from(data)
        if first >> 6 != RTP_VERSION:
            raise RtpError(f"RTP version {first >> 6}")
        cc = first & 0x0F
        offset = RTP_HEADER_SIZE + 4 * cc
        if len(data) < offset:
            raise RtpError("truncated CSRC list")
        csrcs = list(struct.unpack_from(f"!{cc}I", data, RTP_HEADER_SIZE))
        if first & 0x10:  # header extension: 16-bit profile, 16-bit length in words
            if len(data) < offset + 4:
                raise RtpError("truncated extension")
            (words,) = struct.unpack_from("!H", data, offset + 2)
            offset += 4 + 4 * words
        end = len(data)
        if first & 0x20:  # padding: the last octet counts the padding octets
            if end == 0 or data[-1] == 0 or data[-1] > end - offset:
                raise RtpError("bad padding")
            end -= data[-1]
        if offset > end:
            raise RtpError("truncated packet")
        return cls(second & 0x7F, seq, ts, ssrc, data[offset:end], bool(second & 0x80), csrcs)
