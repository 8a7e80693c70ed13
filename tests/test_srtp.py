"""SRTP with SDES keys: the crypto attribute, the offer/answer modes, and packets both ways (pylibsrtp)."""

import base64
import secrets

import pytest

from telephony.rtp.packet import RtpPacket
from telephony.rtp.srtp import Crypto, SrtpContext, SrtpError, SUITES, choose
from telephony.sip.sdp import SdpError, build_answer, negotiate, parse_sdp

KEY = base64.b64encode(bytes(range(30))).decode()


def offer(proto: str = "RTP/SAVP", crypto: tuple[str, ...] = (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}",)) -> bytes:
    lines = ["v=0", "o=a 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
             f"m=audio 40000 {proto} 0 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000"]
    lines += [f"a=crypto:{c}" for c in crypto]
    return ("\r\n".join(lines) + "\r\n").encode()


def test_crypto_attribute_parse_and_choice():
    c = Crypto.parse(f"3 AES_CM_128_HMAC_SHA1_32 inline:{KEY}|2^31")
    assert (c.tag, c.suite, c.key) == (3, "AES_CM_128_HMAC_SHA1_32", bytes(range(30)))
    for bad in ("x AES_CM_128_HMAC_SHA1_80 inline:" + KEY, "1 AES_CM_128_HMAC_SHA1_80 inline:short",
                f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20|1:4"):
        with pytest.raises(SrtpError):
            Crypto.parse(bad)
    chosen = choose([f"1 AES_256_CM_HMAC_SHA1_80 inline:{KEY}", f"2 AES_CM_128_HMAC_SHA1_32 inline:{KEY}"])
    assert chosen is not None and chosen.tag == 2  # the first suite we support, in the caller's order


@pytest.mark.parametrize("mode,proto,ok", [
    ("optional", "RTP/SAVP", True), ("optional", "RTP/AVP", True), ("required", "RTP/SAVP", True),
    ("required", "RTP/AVP", False), ("off", "RTP/SAVP", False), ("off", "RTP/AVP", True),
])
def test_modes(mode, proto, ok):
    sdp = parse_sdp(offer(proto, () if proto == "RTP/AVP" else (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}",)))
    if not ok:
        with pytest.raises(SdpError):
            negotiate(sdp, ["PCMU"], mode, frozenset(SUITES))
        return
    media, index = negotiate(sdp, ["PCMU"], mode, frozenset(SUITES))
    assert media.proto == proto and bool(media.crypto) == (proto == "RTP/SAVP")
    ours = SrtpContext(choose(list(media.crypto))).ours.attribute() if media.crypto else None
    answer = build_answer(sdp, media, index, "127.0.0.1", 30000, 1, crypto=ours).decode()
    assert f"m=audio 30000 {proto} 0 101" in answer
    assert ("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" in answer) == (proto == "RTP/SAVP")


def test_required_without_a_usable_suite_is_refused():
    sdp = parse_sdp(offer(crypto=(f"1 F8_128_HMAC_SHA1_80 inline:{KEY}",)))
    with pytest.raises(SdpError, match="SRTP required"):
        negotiate(sdp, ["PCMU"], "required", frozenset(SUITES))


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_packets_both_ways_and_tampering(suite):
    caller_key = Crypto(1, suite, secrets.token_bytes(30))
    server = SrtpContext(caller_key)
    caller = SrtpContext(server.ours, ours=caller_key)  # the caller: sends with its key, receives with ours
    rtp = RtpPacket(payload_type=0, sequence=7, timestamp=160, ssrc=0x1234, payload=b"\xff" * 160).serialize()
    sent = server.protect(rtp)
    assert sent != rtp and len(sent) == len(rtp) + (10 if suite.endswith("80") else 4)
    assert caller.unprotect(sent) == rtp
    back = caller.protect(rtp)
    assert server.unprotect(back) == rtp
    with pytest.raises(SrtpError):
        server.unprotect(back)  # a replay
    forged = bytearray(caller.protect(RtpPacket(0, 8, 320, 0x1234, b"\x00" * 160).serialize()))
    forged[20] ^= 1
    with pytest.raises(SrtpError):
        server.unprotect(bytes(forged))
    rtcp = bytes([0x80, 200, 0, 6]) + (0x1234).to_bytes(4, "big") + bytes(20)
    assert caller.unprotect_rtcp(server.protect_rtcp(rtcp)) == rtcp


def test_a_new_key_of_theirs_keeps_our_outbound_session():
    theirs = Crypto(1, "AES_CM_128_HMAC_SHA1_80", secrets.token_bytes(30))
    server = SrtpContext(theirs)
    caller = SrtpContext(server.ours, ours=theirs)
    rtp = [RtpPacket(0, n, n * 160, 0x99, b"\x7f" * 160).serialize() for n in range(3)]
    assert caller.unprotect(server.protect(rtp[0])) == rtp[0]
    new_theirs = Crypto(1, theirs.suite, secrets.token_bytes(30))
    again = server.rekeyed(new_theirs)
    assert again.ours.key == server.ours.key and again._tx is server._tx  # same outbound session, same key
    assert caller.unprotect(again.protect(rtp[1])) == rtp[1]
    recaller = SrtpContext(server.ours, ours=new_theirs)
    assert again.unprotect(recaller.protect(rtp[2])) == rtp[2]  # their new key is used inbound
    assert server.rekeyed(theirs) is server
