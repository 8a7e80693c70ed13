"""Placed calls in the sans-IO call table (``CallTable.dial`` and the outbound inputs): the audio
starts at the INVITE, an answer in another codec makes it again, the call ends through its
OutboundCall's hangup, and placed calls count against max_calls. The harness is test_calls.py's."""

from __future__ import annotations

from telephony.call import CallInfo
from telephony.calls import Bind, Ended, Phase, Produce, Release, StartSending
from telephony.sip.events import IncomingCall
from telephony.sip.outbound import OutboundCall, OutboundConfig
from telephony.sip.sdp import negotiate, parse_sdp
from tests.sipmsg import invite

from .test_calls import Harness, Source

ANSWER = "v=0\r\no=far 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\nm=audio 41000 RTP/AVP {pt}\r\n"


def dial(h: Harness, call_id: str = "out-1") -> tuple[list[str], list[str]]:
    """Place a call as outbound_io.py does; (codecs its sources were made for, hangups asked)."""
    made, hangups = [], []
    h.table.outbound_hangup = lambda cid, now: hangups.append(cid)
    cfg = OutboundConfig(target="sip:bob@10.0.0.9", from_uri="sip:tts@192.0.2.1", contact="sip:tts@192.0.2.1",
                         via_host="192.0.2.1:5060", media_address="192.0.2.1", media_port=20000, call_id=call_id)
    call = OutboundCall(cfg)
    call.start(h.now)
    assert call.invite is not None
    info = CallInfo(call_id, "bob", "tts", "PCMU")

    def source(i: CallInfo) -> Source:
        made.append(i.codec)
        return Source()

    port = h.table.ports.acquire()
    h.table.dial(info, source(info), IncomingCall(call_id, "bob", "tts", call.invite, parse_sdp(call.invite.body),
                                                  ("10.0.0.9", 5060)), port, h.now, remake=source)
    return made, hangups


def answer(h: Harness, pt: int, call_id: str = "out-1") -> list[object]:
    remote = parse_sdp(ANSWER.format(pt=pt).encode())
    media, _ = negotiate(remote, ["PCMU", "PCMA"])
    h.table.outbound_answered(call_id, media, remote, h.now)
    return h.pump()


def test_audio_starts_at_the_invite_and_the_call_ends_through_its_sip():
    h = Harness()
    made, hangups = dial(h)
    assert [type(a) for a in h.pump()] == [Produce, Bind] and made == ["PCMU"]
    h.bound("out-1")
    assert h.table.calls["out-1"].phase is Phase.DIALING
    assert [type(a) for a in answer(h, 0)] == [StartSending]
    h.table.prompt_done("out-1", 3.0)
    assert hangups == ["out-1"] and [type(a) for a in h.pump()] == [Ended, Release]
    assert not h.table.calls and h.table.ports.in_use == 0


def test_answer_in_another_codec_while_binding_makes_the_audio_again():
    h = Harness()
    made, _ = dial(h)
    h.pump()
    assert [type(a) for a in answer(h, 8)] == [Produce]  # PCMA: made again; the socket is still binding
    call = h.table.calls["out-1"]
    assert made == ["PCMU", "PCMA"] and call.info.codec == "PCMA" and call.answer_pending
    assert [type(a) for a in h.bound("out-1")] == [StartSending] and call.phase is Phase.CONFIRMED


def test_an_outcome_before_the_answer_ends_the_call_and_frees_its_port():
    h = Harness()
    dial(h)
    h.pump()
    h.bound("out-1")
    h.table.outbound_ended("out-1", "busy", 1.0)
    actions = h.pump()
    assert [type(a) for a in actions] == [Ended, Release] and actions[0].reason == "busy"
    assert h.table.ports.in_use == 0


def test_placed_calls_count_against_max_calls():
    h = Harness(max_calls=1)
    dial(h)
    h.pump()
    h.sip(invite())
    assert h.responses()[-1] == 503  # the inbound call finds the server full


def test_a_reoffer_in_a_placed_call_is_answered_as_an_inbound_calls():
    """Hold (sendonly) from the callee: our answer is recvonly, on our port, in the call's codec, and
    the sender pauses; resume: sendrecv again. An offer without our codec: 488, the session stays."""
    from telephony.rtp.pacer import RtpSender

    h = Harness()
    dial(h)
    h.pump()
    h.bound("out-1")
    answer(h, 0)
    call = h.table.calls["out-1"]
    sender = RtpSender(payload_type=0, codec="PCMU", queue=call.queue, send=lambda d: None)
    h.table.sending("out-1", sender)
    hold = parse_sdp((ANSWER.format(pt=0) + "a=sendonly\r\n").encode())
    sdp = parse_sdp(h.table.outbound_update("out-1", hold, 1800, 2.0))
    assert sdp.media[0].direction == "recvonly" and sdp.media[0].port == call.local_port
    assert sdp.media[0].formats[0] == "0" and sender.paused and call.session_deadline == 1802.0
    resume = parse_sdp(h.table.outbound_update("out-1", parse_sdp(ANSWER.format(pt=0).encode()), None, 3.0))
    assert resume.media[0].direction == "sendrecv" and not sender.paused and call.session_deadline is None
    assert h.table.outbound_update("out-1", parse_sdp(ANSWER.format(pt=8).encode()), None, 4.0) == 488
    assert h.table.outbound_update("nope", None, None, 4.0) == 481


def test_a_source_over_before_the_answer_with_nothing_queued_cancels_the_call():
    """Nothing left to say while it rings (its application went away): hung up now (the CANCEL is
    the OutboundCall's). With audio queued, or once answered, the call waits for the answer /
    plays it out as before (``prompt_done`` ends it)."""
    h = Harness()
    _, hangups = dial(h)
    h.pump()
    h.table.source_over("out-1", 1.0)  # still binding its RTP socket, nothing queued
    assert hangups == ["out-1"] and h.table.calls["out-1"].ended
    h.bound("out-1")
    assert "out-1" not in h.table.calls and h.table.ports.in_use == 0

    for state in ("queued", "answered"):
        h = Harness()
        _, hangups = dial(h)
        h.pump()
        h.bound("out-1")
        if state == "queued":
            h.table.calls["out-1"].queue.push_frames([b"\xff" * 160])
        else:
            answer(h, 0)
        h.table.source_over("out-1", 1.0)
        assert hangups == [] and not h.table.calls["out-1"].ended, state
