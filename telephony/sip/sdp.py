"""SDP offer/answer for one audio stream (RFC 4566, RFC 3264).

We speak G.711 (PCMU, PCMA) at 8 kHz with 20 ms packets, plus RFC 4733
telephone-event when the offer has it. The answer keeps the offer's m-line
order; streams we cannot serve (video, a second audio line, non-RTP/AVP) are
refused with port 0, as RFC 3264 §6 requires.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Static payload types of RFC 3551 that we speak.
STATIC_CODECS = {0: "PCMU", 8: "PCMA"}
G711 = ("PCMU", "PCMA")


class SdpError(ValueError):
    """The offer cannot be parsed or has nothing we can answer (→ 488)."""


@dataclass
class MediaLine:
    media: str
    port: int
    proto: str
    formats: list[str]
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)  # pt → (name, clock rate)
    fmtp: dict[int, str] = field(default_factory=dict)
    direction: str = "sendrecv"
    connection: str | None = None
    ptime: int | None = None
    crypto: list[str] = field(default_factory=list)  # a=crypto values (SDES, RFC 4568)


@dataclass
class SessionDescription:
    origin: str
    connection: str | None
    media: list[MediaLine]


@dataclass(frozen=True)
class NegotiatedAudio:
    """What the answer settled: where to send and which payload types to use."""

    remote_host: str
    remote_port: int
    codec: str  # "PCMU" or "PCMA"
    payload_type: int
    dtmf_payload_type: int | None
    direction: str  # the direction of the offer's audio stream, from the caller's side
    proto: str = "RTP/AVP"  # RTP/SAVP(F): SRTP with one of ``crypto``
    crypto: tuple[str, ...] = ()  # the offer's a=crypto values on the chosen stream


def parse_sdp(body: bytes) -> SessionDescription:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError("SDP is not UTF-8") from None
    origin = ""
    session_conn: str | None = None
    media: list[MediaLine] = []
    session_direction = "sendrecv"
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:].strip()
        current = media[-1] if media else None
        if kind == "o":
            origin = value
        elif kind == "c":
            parts = value.split()
            if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
                raise SdpError(f"bad c= line {value!r}")
            address = parts[2].split("/")[0]
            if current is None:
                session_conn = address
            else:
                current.connection = address
        elif kind == "m":
            parts = value.split()
            if len(parts) < 4:
                raise SdpError(f"bad m= line {value!r}")
            port_text = parts[1].split("/")[0]
            if not port_text.isdigit() or int(port_text) > 65535:
                raise SdpError(f"bad port in m= line {value!r}")
            media.append(MediaLine(parts[0], int(port_text), parts[2], parts[3:], direction=session_direction))
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name in ("sendrecv", "sendonly", "recvonly", "inactive"):
                if current is None:
                    session_direction = name
                else:
                    current.direction = name
            elif current is None:
                continue
            elif name == "rtpmap":
                pt, _, enc = arg.partition(" ")
                enc_parts = enc.strip().split("/")
                if pt.isdigit() and len(enc_parts) >= 2 and enc_parts[1].isdigit():
                    current.rtpmap[int(pt)] = (enc_parts[0], int(enc_parts[1]))
            elif name == "fmtp":
                pt, _, params = arg.partition(" ")
                if pt.isdigit():
                    current.fmtp[int(pt)] = params.strip()
            elif name == "ptime" and arg.strip().isdigit():
                current.ptime = int(arg.strip())
            elif name == "crypto":
                current.crypto.append(arg.strip())
    if not media:
        raise SdpError("no m= line")
    return SessionDescription(origin, session_conn, media)


def _codec_of(line: MediaLine, pt: int) -> tuple[str, int] | None:
    if pt in line.rtpmap:
        name, rate = line.rtpmap[pt]
        return name.upper() if name.upper() in G711 else name.lower(), rate
    if pt in STATIC_CODECS:
        return STATIC_CODECS[pt], 8000
    return None


PLAIN = ("RTP/AVP", "RTP/AVPF")
SECURE = ("RTP/SAVP", "RTP/SAVPF")


def negotiate(offer: SessionDescription, preference: list[str], srtp: str = "off",
              suites: frozenset[str] = frozenset()) -> tuple[NegotiatedAudio, int]:
    """Pick the audio stream and codec; returns the choice and the m-line index.

    ``preference`` orders our codecs (e.g. ``["PCMA", "PCMU"]``); the first one
    the offer contains wins. ``srtp``: "off" takes only RTP/AVP streams, "optional"
    either, "required" only RTP/SAVP streams with an a=crypto of one of ``suites``.
    Raises SdpError when nothing acceptable is offered.
    """
    def usable(line: MediaLine) -> bool:
        proto = line.proto.upper()
        if proto in PLAIN:
            return srtp != "required"
        if proto in SECURE and srtp != "off":
            return any(len(c.split()) > 1 and c.split()[1].upper() in suites for c in line.crypto)
        return False

    for index, line in enumerate(offer.media):
        if line.media != "audio" or line.port == 0 or not usable(line):
            continue
        offered: dict[str, int] = {}
        dtmf: int | None = None
        for fmt in line.formats:
            if not fmt.isdigit():
                continue
            codec = _codec_of(line, int(fmt))
            if codec is None:
                continue
            name, rate = codec
            if name in G711 and rate == 8000:
                offered.setdefault(name, int(fmt))
            elif name == "telephone-event" and rate == 8000 and dtmf is None:
                dtmf = int(fmt)
        for name in preference:
            if name in offered:
                host = line.connection or offer.connection
                if not host:
                    raise SdpError("no c= line for the audio stream")
                # c=0.0.0.0 is the RFC 2543 way to say "hold"
                direction = "inactive" if host in ("0.0.0.0", "::") else line.direction
                secure = line.proto.upper() in SECURE
                return NegotiatedAudio(host, line.port, name, offered[name], dtmf, direction, line.proto.upper(),
                                       tuple(line.crypto) if secure else ()), index
    if srtp == "required":
        raise SdpError("SRTP required: no RTP/SAVP audio stream with a usable a=crypto offered")
    raise SdpError("no G.711 (PCMU/PCMA) audio stream offered")


_ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


def build_answer(offer: SessionDescription, chosen: NegotiatedAudio, index: int, address: str,
                 port: int, session_id: int, version: int = 1, crypto: str | None = None) -> bytes:
    """The SDP answer: our address and port, the chosen codec and telephone-event (and our SDES key)."""
    ip_kind = "IP6" if ":" in address else "IP4"
    lines = [
        "v=0",
        f"o=sip-tts {session_id} {version} IN {ip_kind} {address}",
        "s=sip-tts",
        f"c=IN {ip_kind} {address}",
        "t=0 0",
    ]
    for i, line in enumerate(offer.media):
        if i != index:
            lines.append(f"m={line.media} 0 {line.proto} {' '.join(line.formats)}")
            continue
        fmts = [str(chosen.payload_type)]
        if chosen.dtmf_payload_type is not None:
            fmts.append(str(chosen.dtmf_payload_type))
        lines.append(f"m=audio {port} {chosen.proto} {' '.join(fmts)}")
        lines.append(f"a=rtpmap:{chosen.payload_type} {chosen.codec}/8000")
        if chosen.dtmf_payload_type is not None:
            lines.append(f"a=rtpmap:{chosen.dtmf_payload_type} telephone-event/8000")
            lines.append(f"a=fmtp:{chosen.dtmf_payload_type} 0-16")
        lines.append("a=ptime:20")
        if crypto is not None:
            lines.append(f"a=crypto:{crypto}")
        lines.append(f"a={_ANSWER_DIRECTION.get(chosen.direction, 'sendrecv')}")
    return ("\r\n".join(lines) + "\r\n").encode()
