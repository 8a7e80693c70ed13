"""The sans-IO call table driven with SIP bytes, RTP bytes and a fake clock: no sockets, no sleeps.

A real ``UserAgent`` sits under the table (as in the server); the harness plays the asyncio
layer's part: it carries out the table's actions the way ``server.py`` does, minus the sockets.
"""

from __future__ import annotations

import struct

import pytest

from telephony.call import CallHandle, CallInfo
from telephony.calls import (Answered, BargeIn, Bind, CallSettings, CallTable, Digit, Ended, Phase, Produce,
                             Release, SendRtcp, StartSending)
from telephony.ports import PortAllocator
from telephony.rtp.packet import RtpPacket
from telephony.rtp.pacer import RtpSender
from telephony.sip import Request, Response, parse_message
from telephony.sip.useragent import UserAgent, UserAgentConfig
from tests.sipmsg import OFFER, invite, offer, request

CALLER = ("10.0.0.5", 5062)
CALLER_RTP = ("10.0.0.5", 40000)  # what OFFER says


class Source:
    """An audio source as the router returns it (the harness never runs it: no event loop)."""

    def __init__(self, handles_digits: bool = False, early_media: bool = False) -> None:
        self.handles_digits = handles_digits
        self.early_media = early_media

    async def run(self, call: CallHandle) -> None:
        return None


class Harness:
    def __init__(self, routes: dict[str, Source] | None = None, ports: tuple[int, int] = (20000, 20010),
                 **settings) -> None:
        self.ua = UserAgent(UserAgentConfig("192.0.2.1", 5060))
        self.routes = routes if routes is not None else {"1000": Source()}
        defaults = dict(advertised_host="192.0.2.1", codecs=["PCMU", "PCMA"], max_calls=10,
                        hangup_after_prompt_ms=300, media_timeout=0.0, barge_in=False)
        self.table = CallTable(self.ua, CallSettings(**{**defaults, **settings}), self.route, PortAllocator(*ports),
                               wall_clock=lambda: 1_700_000_000.0)
        self.now = 0.0
        self.table.start(self.now)
        self.done: list[object] = []  # every action carried out, in order
        self.sent: list[bytes] = []  # RTP the senders sent
        self.wire: list[Request | Response] = []  # SIP the UA sent

    def route(self, info: CallInfo) -> Source | None:
        return self.routes.get(info.dialed)

    def pump(self) -> list[object]:
        """What the asyncio layer's pump does; returns the actions carried out."""
        out = []
        for _ in range(100):
            events, actions = self.ua.next_events(), self.table.actions()
            if not events and not actions:
                break
            for action in actions:
                out.append(action)
                if isinstance(action, StartSending):
                    call = action.call
                    self.table.sending(call.info.call_id, RtpSender(call.media.payload_type, call.info.codec,
                                                                    self.sent.append, call.queue))
                elif isinstance(action, Release):
                    self.table.released(action.call.info.call_id)
            for event in events:
                self.table.sip_event(event, self.now)
        self.wire += [parse_message(d) for d, _ in self.ua.datagrams_to_send()]
        self.done += out
        return out

    def sip(self, data: bytes, at: float | None = None) -> list[object]:
        self.now = self.now if at is None else at
        self.ua.receive_datagram(data, CALLER, self.now)
        return self.pump()

    def tick(self, at: float) -> list[object]:
        self.now = at
        self.ua.handle_timer(at)
        self.table.handle_timer(at)
        return self.pump()

    def bound(self, call_id: str = "call-1", ok: bool = True) -> list[object]:
        self.table.media_bound(call_id, ok, self.now)
        return self.pump()

    def responses(self) -> list[int]:
        out = [m.status for m in self.wire if isinstance(m, Response)]
        self.wire = [m for m in self.wire if not isinstance(m, Response)]
        return out

    def requests(self) -> list[str]:
        out = [m.method for m in self.wire if isinstance(m, Request)]
        self.wire = [m for m in self.wire if not isinstance(m, Request)]
        return out

    def answered_call(self, call_id: str = "call-1", **kw) -> tuple[object, str]:
        """A call taken to CONFIRMED; returns it and our To-tag."""
        self.sip(invite(call_id=call_id, **kw))
        self.bound(call_id)
        ok = next(m for m in self.wire if isinstance(m, Response) and m.status == 200)
        tag = ok.headers.get("To").split("tag=")[1]
        self.sip(request("ACK", call_id=call_id, cseq=1, to_tag=tag))
        call = self.table.calls[call_id]
        assert call.phase is Phase.CONFIRMED
        return call, tag


def kinds(actions: list[object]) -> list[str]:
    return [type(a).__name__ for a in actions]


def rtp(seq: int, ts: int = 0, pt: int = 0, payload: bytes = b"\xff" * 160, ssrc: int = 7) -> bytes:
    return RtpPacket(pt, seq, ts, ssrc, payload).serialize()


def test_a_call_binds_answers_plays_and_hangs_up_at_the_end_of_its_prompt():
    h = Harness()
    first = h.sip(invite())
    assert kinds(first) == ["Produce", "Bind"]  # synthesis starts before the socket is bound
    bind = first[1]
    assert isinstance(bind, Bind) and bind.port == 20000
    assert h.responses() == [100]
    call = h.table.calls["call-1"]
    assert call.phase is Phase.BINDING
    h.now = 0.05
    answered = h.bound()
    assert kinds(answered) == ["Answered"] and answered[0].seconds == pytest.approx(0.05)
    ok = next(m for m in h.wire if isinstance(m, Response))
    assert ok.status == 200 and b"m=audio 20000 RTP/AVP 0" in ok.body
    tag = ok.headers.get("To").split("tag=")[1]
    h.responses()
    assert kinds(h.sip(request("ACK", cseq=1, to_tag=tag), at=0.1)) == ["StartSending"]
    assert call.phase is Phase.CONFIRMED and call.sender is not None
    h.table.prompt_done("call-1", 3.1)
    out = h.pump()
    assert kinds(out) == ["Ended", "Release"] and out[0].reason == "prompt-done"
    assert h.requests() == ["BYE"]
    final = out[1].final_rtcp
    assert isinstance(final, SendRtcp) and final.addr == ("10.0.0.5", 40001)  # RTP port + 1
    assert final.data[1] == 200 and b"\x81\xcb" in final.data  # a sender report ... and an RTCP BYE
    assert "call-1" not in h.table.calls and h.table.ports.available == 5  # the port is free again


@pytest.mark.parametrize("dialed, sdp, status", [
    ("1000", "v=0\r\no=x 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\n"
             "a=rtpmap:18 G729/8000\r\n", 488),
    ("9999", OFFER, 404),
])
def test_a_call_that_cannot_be_served_is_refused_without_a_port(dialed, sdp, status):
    h = Harness()
    assert h.sip(invite(user=dialed, sdp=sdp)) == []
    assert h.responses() == [100, status]
    assert len(h.table) == 0 and h.table.ports.available == 5


def test_full_table_and_no_free_port_get_503():
    h = Harness(max_calls=1)
    h.sip(invite(call_id="a"))
    h.sip(invite(call_id="b"))
    assert h.responses() == [100, 100, 503]
    h = Harness(ports=(20000, 20002))  # one RTP port
    h.sip(invite(call_id="a"))
    h.sip(invite(call_id="b"))
    assert h.responses() == [100, 100, 503]


def test_a_port_taken_by_another_process_is_skipped_and_eight_failures_refuse_the_call():
    h = Harness(ports=(20000, 20040))
    h.sip(invite())
    retry = h.bound(ok=False)
    assert kinds(retry) == ["Bind"] and retry[0].port == 20002
    for _ in range(6):
        h.bound(ok=False)
    out = h.bound(ok=False)  # the eighth port is taken too
    assert kinds(out) == ["Release"]
    assert h.responses() == [100, 503]
    assert len(h.table) == 0 and h.table.ports.in_use == 0


def test_cancel_while_the_socket_binds_releases_the_call_once_bound():
    h = Harness()
    branch = "z9hG4bKcancelme"
    h.sip(invite(branch=branch))
    out = h.sip(request("CANCEL", branch=branch, cseq=1))
    assert kinds(out) == ["Ended", "BargeIn"] and out[0].reason == "cancel"  # the audio stops at once
    assert not out[1].announce
    assert sorted(h.responses()) == [100, 200, 487]
    assert len(h.table) == 1  # its socket is still being bound
    assert kinds(h.bound()) == ["Release"]  # ... and closed as soon as it is
    assert len(h.table) == 0 and h.table.ports.in_use == 0


def test_caller_bye_ends_the_call_and_a_late_prompt_end_does_nothing():
    h = Harness()
    call, tag = h.answered_call()
    out = h.sip(request("BYE", cseq=2, to_tag=tag), at=2.0)
    assert kinds(out) == ["Ended", "Release"] and out[0].reason == "remote-bye"
    h.table.prompt_done("call-1", 2.01)  # the race: our prompt ends as the BYE arrives
    h.table.hangup(call, "prompt-done", 2.01)
    assert h.pump() == [] and h.requests() == []  # no second end, no BYE of ours
    assert [a.reason for a in h.done if isinstance(a, Ended)] == ["remote-bye"]


def test_hold_pauses_the_sender_resume_continues_and_the_caller_is_latched_again():
    h = Harness()
    call, tag = h.answered_call()
    h.table.rtp_received("call-1", rtp(1), ("10.0.0.9", 41000), 0.2)  # NAT: not where the SDP said
    assert call.remote == ("10.0.0.9", 41000)
    h.table.rtp_received("call-1", rtp(2), ("10.0.0.66", 1), 0.22)  # latched once: a stray source is ignored
    assert call.remote == ("10.0.0.9", 41000)
    held = offer().replace("a=sendrecv", "a=sendonly")
    h.sip(invite(cseq=2, to_tag=tag, sdp=held), at=1.0)
    assert call.held and call.sender.paused
    assert h.responses()[-1] == 200
    assert call.remote == CALLER_RTP  # the re-offer's address, until the next packet
    h.sip(invite(cseq=3, to_tag=tag, sdp=offer()), at=2.0)
    assert not call.held and not call.sender.paused
    h.table.rtp_received("call-1", rtp(3), ("10.0.0.9", 41002), 2.1)
    assert call.remote == ("10.0.0.9", 41002)  # latched again after the re-INVITE
    assert call.phase is Phase.CONFIRMED


def test_session_expires_without_a_refresh_and_a_refresh_moves_the_deadline():
    h = Harness()
    timer = "Supported: timer\r\nSession-Expires: 120;refresher=uac\r\n"
    call, tag = h.answered_call(extra=timer)
    assert call.session_deadline == 120.0
    h.sip(request("UPDATE", cseq=2, to_tag=tag, extra=timer), at=100.0)  # the caller refreshes
    assert call.session_deadline == 220.0
    h.tick(150.0)
    assert "call-1" in h.table.calls  # the old deadline (120) is gone
    for t in (160.0, 180.0, 200.0, 219.0):
        h.tick(t)
    assert "call-1" in h.table.calls
    out = h.tick(220.5)
    assert [a.reason for a in out if isinstance(a, Ended)] == ["session-expired"]
    assert "BYE" in h.requests()


def test_a_refresh_update_without_an_offer_gets_a_200_without_sdp():
    """RFC 4028 §7.4's refresh (an UPDATE with no body) is answered 200 with the timer and no SDP (an
    offer may only travel in the UPDATE itself: RFC 3311 §5.2); a re-INVITE without one still gets ours."""
    h = Harness()
    timer = "Supported: timer\r\nSession-Expires: 120;refresher=uac\r\n"
    call, tag = h.answered_call(extra=timer)
    h.wire.clear()
    h.sip(request("UPDATE", cseq=2, to_tag=tag, extra=timer), at=60.0)
    (ok,) = [m for m in h.wire if isinstance(m, Response)]
    assert ok.status == 200 and ok.cseq == (2, "UPDATE") and ok.body == b""
    assert ok.headers.get("Content-Type") is None and ok.headers.get("Session-Expires") == "120;refresher=uac"
    assert call.session_deadline == 180.0
    h.wire.clear()
    h.sip(invite(cseq=3, to_tag=tag, sdp=None), at=70.0)  # a re-INVITE without SDP: we offer, in the 200
    (ok,) = [m for m in h.wire if isinstance(m, Response) and m.status == 200]
    assert ok.body.startswith(b"v=0") and ok.headers.get("Content-Type") == "application/sdp"


def test_media_timeout_ends_a_silent_call_but_not_a_held_one():
    h = Harness(media_timeout=2.0)
    call, tag = h.answered_call()
    h.table.rtp_received("call-1", rtp(1), CALLER_RTP, 1.0)
    h.tick(2.5)
    assert "call-1" in h.table.calls  # RTP 1.5 s ago
    out = h.tick(3.5)
    assert [a.reason for a in out if isinstance(a, Ended)] == ["media-timeout"]
    h = Harness(media_timeout=2.0)
    call, tag = h.answered_call()
    h.sip(invite(cseq=2, to_tag=tag, sdp=offer().replace("a=sendrecv", "a=inactive")), at=0.5)
    for t in (1.0, 2.0, 3.0, 4.0, 5.0):
        h.tick(t)
    assert "call-1" in h.table.calls and call.held  # a held caller sends nothing: not a dead call


def test_rtcp_reports_go_out_at_the_randomised_interval_to_the_callers_rtcp_port():
    h = Harness()
    call, _ = h.answered_call()
    first = call.rtcp_deadline
    assert 2.0 <= first <= 6.5  # RFC 3550: 5 s x [0.5, 1.5] / (e - 3/2)
    out = h.tick(first)
    (report,) = [a for a in out if isinstance(a, SendRtcp)]
    assert report.addr == ("10.0.0.5", 40001) and report.data[1] == 200
    assert call.rtcp_deadline > first  # the next one is scheduled
    h.table.rtcp_received("call-1", report.data, ("10.0.0.5", 40011))
    assert call.rtcp_remote == ("10.0.0.5", 40011)  # reports then go where the caller's come from


def _event(digit: int, ts: int, seq: int, end: bool) -> bytes:
    return rtp(seq, ts, pt=101, payload=struct.pack("!BBH", digit, 0x80 if end else 0, 800))


def test_rfc4733_and_info_digits_reach_the_source_and_barge_in_applies_only_without_menus():
    h = Harness(barge_in=True, routes={"1000": Source(), "2000": Source(handles_digits=True)})
    call, tag = h.answered_call()
    for seq, end in ((10, False), (11, True), (12, True)):  # end packets are sent three times
        h.table.rtp_received("call-1", _event(5, 8000, seq, end), CALLER_RTP, 1.0)
    out = h.table.actions()
    assert kinds(out) == ["Digit", "BargeIn"] and out[0].digit.digit == "5" and out[0].digit.source == "rfc4733"
    h.sip(request("INFO", cseq=2, to_tag=tag, extra="Content-Type: application/dtmf-relay\r\n")
          .replace(b"Content-Length: 0\r\n\r\n", b"Content-Length: 22\r\n\r\nSignal=7\r\nDuration=160"), at=1.5)
    digits = [a.digit.digit for a in h.done if isinstance(a, Digit)]
    assert digits == ["7"] and [d.digit for d in call.digits] == ["5", "7"]
    h2 = Harness(barge_in=True, routes={"2000": Source(handles_digits=True)})
    call2, _ = h2.answered_call(user="2000")
    h2.table.rtp_received("call-1", _event(1, 16000, 20, True), CALLER_RTP, 1.0)
    assert kinds(h2.table.actions()) == ["Digit"]  # the menu takes the digit itself


def test_early_media_plays_in_183_and_ends_with_480_never_answered():
    h = Harness(routes={"1000": Source(early_media=True)})
    h.sip(invite())
    out = h.bound()
    assert kinds(out) == ["StartSending"]  # audio at once, no Answered
    assert h.responses() == [100, 183]
    call = h.table.calls["call-1"]
    assert call.phase is Phase.EARLY
    h.table.prompt_done("call-1", 4.0)
    out = h.pump()
    assert kinds(out) == ["Ended", "Release"] and out[0].reason == "prompt-done"
    assert h.responses() == [480]


def test_draining_hangs_up_every_call_and_a_call_still_binding_is_refused():
    h = Harness()
    h.answered_call(call_id="a")
    h.sip(invite(call_id="b"))  # still binding
    h.table.hangup_all("shutdown", 5.0)
    out = h.pump()
    assert sorted(a.reason for a in out if isinstance(a, Ended)) == ["shutdown", "shutdown"]
    assert "BYE" in h.requests() and 480 in h.responses()
    assert list(h.table.calls) == ["b"]  # released once its socket is bound
    h.bound("b")
    assert len(h.table) == 0 and h.table.ports.in_use == 0


def test_the_table_never_calls_back_it_only_returns_actions():
    """Every action is a plain value naming its call; nothing here touches an event loop."""
    h = Harness()
    h.answered_call()
    h.tick(10.0)
    for action in h.done:
        assert isinstance(action, (Produce, Bind, Answered, StartSending, SendRtcp, Digit, BargeIn, Release, Ended))
        assert action.call.info.call_id == "call-1"


SRTP_KEY = bytes(range(30))


def srtp_offer(key: bytes = SRTP_KEY, tag: int = 1) -> str:
    import base64

    return (f"v=0\r\no=caller 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
            f"m=audio 40000 RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
            f"a=crypto:{tag} AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(key).decode()}\r\na=sendrecv\r\n")


def test_srtp_call_answers_with_our_key_unprotects_theirs_and_protects_its_rtcp():
    """The call core keys the call from the offer, drops what fails authentication, and its RTCP is SRTCP."""
    from telephony.rtp.srtp import Crypto, SrtpContext
    from telephony.sip.sdp import parse_sdp

    h = Harness(srtp="optional")
    call, tag = h.answered_call(sdp=srtp_offer())
    assert call.srtp is not None and call.srtp.theirs.key == SRTP_KEY
    ours = call.srtp.ours
    assert ours.key != SRTP_KEY and ours.tag == 1
    ok = next(m for m in h.wire if isinstance(m, Response) and m.status == 200)
    (media,) = parse_sdp(ok.body).media
    assert media.proto == "RTP/SAVP" and media.crypto == [ours.attribute()]  # our fresh key, the offer's tag
    # the caller's side of the call: it protects with its key, unprotects with ours
    caller = SrtpContext(Crypto(1, "AES_CM_128_HMAC_SHA1_80", SRTP_KEY), ours=Crypto(1, ours.suite, SRTP_KEY))
    peer_rx = SrtpContext(ours)  # theirs=ours: its inbound session reads what we protect
    h.table.rtp_received("call-1", caller.protect(rtp(1, 0)), CALLER_RTP, 0.02)
    h.table.rtp_received("call-1", rtp(2, 160), CALLER_RTP, 0.04)  # plain RTP on an SRTP call: dropped
    forged = bytearray(caller.protect(rtp(3, 320)))
    forged[-1] ^= 0xFF  # a wrong authentication tag
    h.table.rtp_received("call-1", bytes(forged), CALLER_RTP, 0.06)
    assert call.rx.received == 1
    call.sender.packets_sent = 1
    report = next(a for a in h.tick(10.0) if isinstance(a, SendRtcp))
    assert report.data[1] == 200  # (the SRTCP header stays readable)
    assert peer_rx.unprotect_rtcp(report.data)[1] == 200  # authenticated with our key: an SR


def test_srtp_required_refuses_a_plain_offer_and_a_re_offer_may_not_drop_srtp():
    h = Harness(srtp="required")
    h.sip(invite())
    assert h.responses()[-1] == 488
    mki = srtp_offer().replace("\r\na=sendrecv", "|2^20|1:4\r\na=sendrecv")  # a key with an MKI: unusable
    h.sip(invite(call_id="call-2", sdp=mki))
    assert h.responses()[-1] == 488 and not h.table.calls
    h2 = Harness(srtp="optional")
    _, tag = h2.answered_call(sdp=srtp_offer())
    h2.responses()
    h2.sip(invite(to_tag=tag, cseq=2))  # a re-INVITE with a plain RTP/AVP offer
    assert 488 in h2.responses()
    h2.sip(invite(to_tag=tag, cseq=3, sdp=srtp_offer(key=bytes(30), tag=2)))  # new key of theirs: accepted
    ok = [m for m in h2.wire if isinstance(m, Response) and m.status == 200]
    assert ok and b"a=crypto:2 AES_CM_128_HMAC_SHA1_80" in ok[-1].body
    assert h2.table.calls["call-1"].srtp.theirs.key == bytes(30)
