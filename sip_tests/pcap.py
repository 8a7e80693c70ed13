"""Read UDP packets from a classic pcap file (what tcpdump -w writes), no dependencies."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class UdpPacket:
    time: float
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


def read_udp(path: str | Path) -> list[UdpPacket]:
    data = Path(path).read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError("not a pcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    link_len = {1: 14, 113: 16, 276: 20, 0: 4, 12: 0, 101: 0}.get(linktype)
    if link_len is None:
        raise ValueError(f"unsupported link type {linktype}")
    out: list[UdpPacket] = []
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack_from(endian + "IIII", data, off)
        off += 16
        frame = data[off:off + incl]
        off += incl
        ip = frame[link_len:]
        if len(ip) >= 40 and ip[0] >> 4 == 6 and ip[6] == 17:  # IPv6, UDP right after the fixed header
            udp = ip[40:]
            src, dst = str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40]))
        elif len(ip) >= 20 and ip[0] >> 4 == 4 and ip[9] == 17:
            udp = ip[(ip[0] & 0x0F) * 4:]
            src = ".".join(str(b) for b in ip[12:16])
            dst = ".".join(str(b) for b in ip[16:20])
        else:
            continue
        if len(udp) < 8:
            continue
        sport, dport, length = struct.unpack_from("!HHH", udp)
        ts = sec + frac / (1e9 if nano else 1e6)
        out.append(UdpPacket(ts, (src, sport), (dst, dport), bytes(udp[8:length])))
    return out
