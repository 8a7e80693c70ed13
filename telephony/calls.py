"""The call table: every call's media-side state and timers, sans-IO like the ``UserAgent``.

The asyncio layer (``server.py``) feeds it the UA's events, its own I/O results (an RTP socket
bound, a packet arrived, a prompt played out) and the time, and carries out the actions it
returns (bind a socket, start the audio, send RTCP, release a call's sockets). It never calls
back into that layer: ``now`` is an argument, and what to do is a list of ``Action`` values read
with ``actions()``. All of a call's timers (session expiry, the RTCP interval, the media-timeout
sweep) are on one heap the asyncio layer drives through one timer handle (``get_timer``).

A call moves BINDING (its RTP socket is being bound) -> ANSWERED (200 sent, waiting for the ACK)
or EARLY (183 with audio, never answered) -> CONFIRMED (audio flows) -> ENDED (its resources
are being released); a call that ends earlier skips the states in between. A call we place
(``dial``; its SIP is ``sip/outbound.py``'s, carried by ``outbound_io.py``) moves BINDING ->
DIALING (INVITE out, audio already being made) -> CONFIRMED at the 2xx (we ACK it at once).
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import logging
import secrets
import struct
import time
from dataclasses import dataclass, field
from typing import Callable

from media import FRAME_SAMPLES, SAMPLE_RATE, SILENCE

from .call import AudioSource, CallInfo, Router
from .ports import PortAllocator, PortsExhausted
from .rtp.dtmf import DtmfDigit, Rfc4733Detector, parse_info
from .rtp.packet import RtpError, RtpPacket
from .rtp.pacer import FrameQueue, RtpSender
from .rtp.rtcp import ReceiveStats, ReportBlock, RtcpError, SenderReport, parse_compound, report_interval, sdes_cname
from .rtp.rtcp import bye as rtcp_bye
from .rtp.srtp import SUITES as SRTP_SUITES, SrtpContext, SrtpError, choose as choose_crypto
from .sip.events import CallConfirmed, CallEnded, Event, IncomingCall, InfoReceived, SessionUpdate
from .sip.sdp import NegotiatedAudio, SdpError, SessionDescription, build_answer, negotiate
from .sip.useragent import UserAgent

log = logging.getLogger("telephony.server")
Address = tuple[str, int]
BIND_ATTEMPTS = 8  # RTP ports tried per call when others are taken by another process
SWEEP_INTERVAL = 1.0  # how often calls are checked for a media timeout
RETRY_AFTER = [("Retry-After", "5")]


class Phase(enum.Enum):
    BINDING = "binding"
    ANSWERED = "answered"
    EARLY = "early"
    CONFIRMED = "confirmed"
    DIALING = "dialing"  # outbound: the INVITE is out, no answer yet
    ENDED = "ended"


@dataclass(frozen=True)
class CallSettings:
    """What the call table needs of the configuration (defaults: config/schema.py)."""

    advertised_host: str
    codecs: list[str]
    max_calls: int
    hangup_after_prompt_ms: int
    media_timeout: float  # no RTP from the caller for this long: BYE (0: off)
    barge_in: bool  # a DTMF digit stops the prompt at once (sources that run menus decide themselves)
    srtp: str = "off"  # off | optional | required (required: a plain RTP offer gets 488); the app maps media.srtp
    summary: dict[str, str] = field(default_factory=dict)  # more fields of each call's summary line


@dataclass(eq=False)
class Call:
    """One call as the media side sees it."""

    info: CallInfo
    incoming: IncomingCall
    media: NegotiatedAudio
    local_port: int
    queue: FrameQueue
    source: AudioSource
    offer_index: int
    invite_at: float
    session_id: int
    phase: Phase = Phase.BINDING
    handles_digits: bool = False  # the source runs menus: no server-level barge-in
    early_media: bool = False  # played in 183 Session Progress, then refused with 480 (never answered)
    sender: RtpSender | None = None
    confirmed_at: float | None = None
    end_reason: str = ""
    sdp_version: int = 1
    session_deadline: float | None = None  # RFC 4028: no refresh by then ends the call
    rtcp_deadline: float | None = None
    bind_attempts: int = 1
    dtmf: Rfc4733Detector | None = None
    digits: list[DtmfDigit] = field(default_factory=list)
    last_rtp_at: float | None = None  # when the caller's RTP last arrived
    rtp_source: Address | None = None  # symmetric RTP: where the caller's packets come from (None: not seen yet)
    rx: ReceiveStats = field(default_factory=ReceiveStats)  # the caller's stream: loss, jitter
    rtcp_remote: Address | None = None  # where the caller's RTCP comes from (else RTP port + 1)
    peer_report: ReportBlock | None = None  # the caller's view of our stream
    srtp: SrtpContext | None = None  # the call's SRTP sessions (telephony/rtp/srtp.py) when it is SRTP
    outbound: bool = False  # we placed it: ``incoming`` holds our INVITE and the callee's SDP (once answered)
    remake: Callable[[CallInfo], AudioSource] | None = None  # outbound: the source again, for another codec
    answer_pending: bool = False  # outbound: answered while its socket was still binding
    tap_audio: bool = False  # the audio source asked for the caller's audio (``CallerAudio`` actions)

    @property
    def crypto(self) -> str | None:
        """Our a=crypto value for the answer (None: plain RTP)."""
        return self.srtp.ours.attribute() if self.srtp is not None else None

    @property
    def remote(self) -> Address:
        return self.media.remote_host, self.media.remote_port

    @property
    def held(self) -> bool:
        return self.media.direction in ("sendonly", "inactive")

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED


# -- actions for the asyncio layer ------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    """Something the asyncio layer must do for ``call``."""

    call: Call


class Produce(Action):
    """Start the call's audio source writing into its queue (synthesis starts at the INVITE)."""


class StartSending(Action):
    """Put the call's RTP sender on the pacer clock; report it with ``sending``."""


@dataclass(frozen=True)
class Bind(Action):
    """Bind the call's RTP socket on ``port`` (and RTCP on the port above), then ``media_bound``."""

    port: int


@dataclass(frozen=True)
class SendRtcp(Action):
    data: bytes
    addr: Address


@dataclass(frozen=True)
class Digit(Action):
    """A digit for the call's audio source."""

    digit: DtmfDigit


@dataclass(frozen=True)
class CallerAudio(Action):
    """A packet of the caller's audio for the audio source (only while it listens: ``tap_audio``)."""

    sequence: int
    timestamp: int
    payload: bytes


@dataclass(frozen=True)
class Release(Action):
    """The call is over: stop its sender and audio source, close its sockets (after sending
    ``final_rtcp`` if any), then report ``released``."""

    final_rtcp: SendRtcp | None


@dataclass(frozen=True)
class Answered(Action):
    """For the application: the 200 OK went out ``seconds`` after the INVITE."""

    seconds: float


@dataclass(frozen=True)
class BargeIn(Action):
    """Stop the prompt now: queued frames flushed, the audio source cancelled (``announce``: log it)."""

    announce: bool = True


@dataclass(frozen=True)
class Ended(Action):
    """For the application: the call ended (before its resources are released)."""

    reason: str


class CallTable:
    """Every call in progress; drives the UA's call methods and says what the I/O layer must do."""

    def __init__(self, ua: UserAgent, settings: CallSettings, router: Router, ports: PortAllocator,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.ua = ua
        self.settings = settings
        self.router = router
        self.ports = ports
        self.wall_clock = wall_clock  # RTCP's NTP timestamps only; everything else runs on ``now``
        self.calls: dict[str, Call] = {}
        self._actions: list[Action] = []
        self._timers: list[tuple[float, int, str, str]] = []  # heap of (deadline, seq, kind, call_id)
        self._seq = 0
        self._sweep_at: float | None = None
        # outbound calls: how to end one (CANCEL or BYE by its OutboundCall); set by outbound_io.py
        self.outbound_hangup: Callable[[str, float], None] | None = None

    def __len__(self) -> int:
        return len(self.calls)

    def actions(self) -> list[Action]:
        out, self._actions = self._actions, []
        return out

    def sources(self) -> set[Address]:
        """Where the calls in progress came from (their TCP connections must stay open)."""
        return {c.incoming.source for c in self.calls.values()}

    # -- SIP events -----------------------------------------------------------------------
    def sip_event(self, ev: Event, now: float) -> None:
        if isinstance(ev, IncomingCall):
            self._incoming(ev, now)
            return
        call = self.calls.get(ev.call_id)
        if isinstance(ev, CallConfirmed):
            if call is not None and call.phase is Phase.ANSWERED:
                self._start_media(call, now)
        elif isinstance(ev, CallEnded):
            if call is not None:
                self._finish(call, ev.reason, now)
        elif isinstance(ev, SessionUpdate):
            self._session_update(ev, call, now)
        elif isinstance(ev, InfoReceived):
            digit = parse_info(ev.content_type, ev.body)
            if call is not None and digit is not None:
                self._digit(call, digit)

    def _incoming(self, ev: IncomingCall, now: float) -> None:
        if len(self.calls) >= self.settings.max_calls:
            self.ua.reject(ev.call_id, 503, now, RETRY_AFTER)
            return
        try:
            media, index = self._negotiate(ev.offer, self.settings.codecs)
        except SdpError as exc:
            log.info("call %s: %s", ev.call_id, exc)
            self.ua.reject(ev.call_id, 488, now, [("Warning", f'304 sip-tts "{exc}"')])
            return
        headers: dict[str, str] = {}
        for name, value in ev.request.headers.items:
            headers.setdefault(name, value)
        info = CallInfo(ev.call_id, ev.dialed, ev.caller, media.codec, headers)
        source = self.router(info)
        if source is None:
            self.ua.reject(ev.call_id, 404, now)
            return
        try:
            port = self.ports.acquire()
        except PortsExhausted:
            self.ua.reject(ev.call_id, 503, now, RETRY_AFTER)
            return
        call = Call(info, ev, media, port, FrameQueue(SILENCE[media.codec]), source, index, now,
                    secrets.randbelow(2**31), handles_digits=source.handles_digits, early_media=source.early_media)
        theirs = choose_crypto(list(media.crypto)) if media.crypto else None
        call.srtp = SrtpContext(theirs) if theirs is not None else None
        self.calls[ev.call_id] = call
        if media.dtmf_payload_type is not None:
            call.dtmf = Rfc4733Detector(SAMPLE_RATE)
        self._arm_session(call, ev.session_expires, now)
        # Synthesis starts now, while the socket binds and the 200 OK travels.
        self._actions.append(Produce(call))
        self._actions.append(Bind(call, port))

    # -- I/O results ----------------------------------------------------------------------
    def media_bound(self, call_id: str, ok: bool, now: float, refuse: int | None = None) -> None:
        """The RTP socket of ``Bind`` is bound (``ok``), or its port was taken by another process.
        ``refuse``: the audio source will not play (its application failed): refuse with this status."""
        call = self.calls.get(call_id)
        if call is None:
            return
        if call.ended:  # cancelled or hung up while binding
            self._actions.append(Release(call, None))
            return
        if call.outbound:
            self._outbound_bound(call, ok, now, refuse)
            return
        if ok and refuse:
            self.ua.reject(call_id, refuse, now)
            self._finish(call, "refused", now)
            self._actions.append(Release(call, None))
            return
        if not ok:
            self.ports.skip(call.local_port)
            try:
                if call.bind_attempts >= BIND_ATTEMPTS:
                    raise PortsExhausted("no RTP port could be bound")
                call.local_port = self.ports.acquire()
            except PortsExhausted:
                self.ua.reject(call_id, 503, now, RETRY_AFTER)
                self._forget(call)
                self._actions.append(Release(call, None))
                return
            call.bind_attempts += 1
            self._actions.append(Bind(call, call.local_port))
            return
        sdp = build_answer(call.incoming.offer, call.media, call.offer_index, self.settings.advertised_host,
                           call.local_port, call.session_id, crypto=call.crypto)
        if call.early_media:
            # 183 with SDP and the audio at once; at its end the call is refused (480), never answered
            self.ua.progress(call_id, sdp, now)
            call.phase = Phase.EARLY
            self._start_media(call, now)
            return
        self.ua.answer(call_id, sdp, now)
        call.phase = Phase.ANSWERED
        self._actions.append(Answered(call, now - call.invite_at))

    def sending(self, call_id: str, sender: RtpSender) -> None:
        """The sender of ``StartSending`` is on the clock."""
        call = self.calls.get(call_id)
        if call is not None:
            call.sender = sender
            sender.paused = call.held

    def released(self, call_id: str) -> None:
        """The call's sockets are closed and its audio stopped: its port is free again."""
        call = self.calls.get(call_id)
        if call is not None and call.ended:
            self._forget(call)

    def prompt_done(self, call_id: str, now: float) -> None:
        """The audio source finished and its queue played out: hang up (BYE, or 480 for early media)."""
        call = self.calls.get(call_id)
        if call is not None:
            self.hangup(call, "prompt-done", now)

    def rtp_received(self, call_id: str, data: bytes, addr: Address, now: float) -> None:
        call = self.calls.get(call_id)
        if call is None:
            return
        if call.srtp is not None:
            try:
                data = call.srtp.unprotect(data)
            except SrtpError:
                return  # forged, replayed or not SRTP: as if it never came
        call.last_rtp_at = now
        if len(data) >= 12 and data[0] >> 6 == 2:
            seq, ts, ssrc = struct.unpack_from("!HII", data, 2)
            call.rx.feed(ssrc, seq, ts, now)
        if call.rtp_source is None and addr[1] != 0:  # (port 0: a raw-socket sender, e.g. SIPp's pcap player)
            # Symmetric RTP (RFC 4961): send where the caller's packets really come from,
            # decided once per call (and again after a re-INVITE): the SDP may lie behind NAT.
            call.rtp_source = addr
            if addr != call.remote:
                log.info("call %s: RTP latched to %s:%d (SDP said %s:%d)", call.info.call_id, *addr, *call.remote)
                call.media = dataclasses.replace(call.media, remote_host=addr[0], remote_port=addr[1])
        if call.tap_audio and len(data) >= 12 and (data[1] & 0x7F) == call.media.payload_type:
            try:
                packet = RtpPacket.parse(data)
            except RtpError:
                return
            self._actions.append(CallerAudio(call, packet.sequence, packet.timestamp, packet.payload))
            return
        if call.dtmf is None or len(data) < 12 or (data[1] & 0x7F) != call.media.dtmf_payload_type:
            return
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            return
        for digit in call.dtmf.feed(packet.timestamp, packet.payload):
            self._digit(call, digit)

    def rtcp_received(self, call_id: str, data: bytes, addr: Address) -> None:
        call = self.calls.get(call_id)
        if call is None:
            return
        try:
            if call.srtp is not None:
                data = call.srtp.unprotect_rtcp(data)
            reports = parse_compound(data)
        except (RtcpError, SrtpError):
            return  # (a forged packet does not move where our reports go)
        call.rtcp_remote = addr
        for report in reports:
            for block in report.blocks:
                if call.sender is not None and block.ssrc == call.sender.ssrc:
                    call.peer_report = block

    # -- requests of the application -------------------------------------------------------
    def hangup(self, call: Call, reason: str, now: float) -> None:
        if call.ended:
            return
        if call.outbound and self.outbound_hangup is not None:
            self.outbound_hangup(call.info.call_id, now)
        else:
            self.ua.hangup(call.info.call_id, now)
        self._finish(call, reason, now)

    def hangup_all(self, reason: str, now: float) -> None:
        for call in list(self.calls.values()):
            self.hangup(call, reason, now)

    # -- outbound calls ----------------------------------------------------------------------
    def dial(self, info: CallInfo, source: AudioSource, invite: IncomingCall, port: int, now: float,
             remake: Callable[[CallInfo], AudioSource] | None = None) -> Call:
        """A call whose INVITE just went out on ``port``'s offer: its audio starts now (in the first
        offered codec, ``info.codec``), so speech is waiting at the answer."""
        codec = info.codec
        media = NegotiatedAudio(*invite.source, codec, 0 if codec == "PCMU" else 8, 101, "sendrecv")
        call = Call(info, invite, media, port, FrameQueue(SILENCE[codec]), source, 0, now, secrets.randbelow(2**31),
                    handles_digits=source.handles_digits, outbound=True, remake=remake)
        call.dtmf = Rfc4733Detector(SAMPLE_RATE)
        self.calls[info.call_id] = call
        self._actions.append(Produce(call))
        self._actions.append(Bind(call, port))
        return call

    def outbound_answered(self, call_id: str, media: NegotiatedAudio, answer: SessionDescription,
                          now: float) -> None:
        """The 2xx with the callee's SDP: media flows (another codec than the first offered one
        restarts the audio in that codec)."""
        call = self.calls.get(call_id)
        if call is None or call.ended:
            return
        call.incoming = dataclasses.replace(call.incoming, offer=answer)
        if media.codec != call.info.codec and call.remake is not None:
            call.info = dataclasses.replace(call.info, codec=media.codec)
            call.queue = FrameQueue(SILENCE[media.codec])
            call.source = call.remake(call.info)
            self._actions.append(Produce(call))  # the I/O layer cancels the first producer
        call.media = media
        if call.phase is Phase.BINDING:
            call.answer_pending = True
            return
        call.phase = Phase.ANSWERED
        self._start_media(call, now)

    def source_over(self, call_id: str, now: float) -> None:
        """The call's audio source has finished. A placed call not answered yet with nothing queued
        has nothing left to say (the application that was to drive it went away, its script
        ended): it is cancelled now (CANCEL; the outcome ``cancelled``), not answered only to be
        hung up. Any other call ends when its queue has played out (``prompt_done``)."""
        call = self.calls.get(call_id)
        if call is None or call.ended or not call.outbound or call.answer_pending or call.queue.pending:
            return
        if call.phase in (Phase.BINDING, Phase.DIALING):
            log.info("call %s: nothing to say before the answer: cancelling", call_id)
            self.hangup(call, "nothing-to-say", now)

    def outbound_ended(self, call_id: str, reason: str, now: float) -> None:
        """The call's SIP is over (an outcome before the answer, or a BYE after it)."""
        call = self.calls.get(call_id)
        if call is not None:
            self._finish(call, reason, now)

    def _outbound_bound(self, call: Call, ok: bool, now: float, refuse: int | None = None) -> None:
        call.phase = Phase.DIALING
        if not ok:  # the offer named this port: no other will do
            log.warning("call %s: RTP port %d could not be bound", call.info.call_id, call.local_port)
            self.hangup(call, "failed", now)
            return
        if refuse:  # its audio source will not play (an application failed): CANCEL or BYE
            self.hangup(call, "refused", now)
            return
        if call.answer_pending:
            call.phase = Phase.ANSWERED
            self._start_media(call, now)

    # -- time -------------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Start the media-timeout sweep (when configured)."""
        if self.settings.media_timeout > 0:
            self._sweep_at = now + SWEEP_INTERVAL

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next (None: no timer)."""
        while self._timers and not self._live(self._timers[0]):
            heapq.heappop(self._timers)
        head = self._timers[0][0] if self._timers else None
        if self._sweep_at is None:
            return head
        return self._sweep_at if head is None else min(head, self._sweep_at)

    def handle_timer(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            entry = heapq.heappop(self._timers)
            if not self._live(entry):
                continue
            _, _, kind, call_id = entry
            call = self.calls[call_id]
            if kind == "session":
                call.session_deadline = None
                log.info("call %s: session expired without a refresh", call_id)
                self.hangup(call, "session-expired", now)
            else:
                call.rtcp_deadline = None
                self._send_rtcp(call, now)
        if self._sweep_at is not None and self._sweep_at <= now:
            self._end_silent_calls(now)
            self._sweep_at = now + SWEEP_INTERVAL

    def _live(self, entry: tuple[float, int, str, str]) -> bool:
        when, _, kind, call_id = entry
        call = self.calls.get(call_id)
        if call is None or call.ended:
            return False
        return (call.session_deadline if kind == "session" else call.rtcp_deadline) == when

    def _push(self, when: float, kind: str, call: Call) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, kind, call.info.call_id))

    def _arm_session(self, call: Call, seconds: int | None, now: float) -> None:
        """RFC 4028: the caller refreshes; if it does not within the interval, the session is over."""
        call.session_deadline = now + seconds if seconds else None
        if call.session_deadline is not None:
            self._push(call.session_deadline, "session", call)

    def _end_silent_calls(self, now: float) -> None:
        """Media timeout: no RTP from the caller for ``media_timeout`` seconds ends the call."""
        for call in list(self.calls.values()):
            if call.ended or call.confirmed_at is None or call.held:
                continue
            since = call.last_rtp_at if call.last_rtp_at is not None else call.confirmed_at
            if now - since > self.settings.media_timeout:
                log.info("call %s: no RTP for %.0f s", call.info.call_id, now - since)
                self.hangup(call, "media-timeout", now)

    # -- the call's media ---------------------------------------------------------------------
    def _start_media(self, call: Call, now: float) -> None:
        if call.phase is Phase.ANSWERED:
            call.phase = Phase.CONFIRMED
        call.confirmed_at = now
        self._actions.append(StartSending(call))
        call.rtcp_deadline = now + report_interval()
        self._push(call.rtcp_deadline, "rtcp", call)

    def _session_update(self, ev: SessionUpdate, call: Call | None, now: float) -> None:
        """re-INVITE/UPDATE: hold, resume, a new remote address; refreshes the session timer."""
        answer = self._updated_session(call, ev.offer, ev.method) if call is not None and not call.ended else 481
        if isinstance(answer, int):
            self.ua.reject_update(ev.call_id, answer, now)
            return
        assert call is not None
        self.ua.answer_update(ev.call_id, answer, now)
        self._arm_session(call, ev.session_expires, now)  # (the interval the UA's 200 just agreed)

    def outbound_update(self, call_id: str, offer: SessionDescription | None, session_expires: int | None,
                        now: float, method: str = "INVITE") -> bytes | int:
        """A re-INVITE/UPDATE inside a call we placed (its SIP is sip/outbound.py's): our SDP answer
        (empty for an UPDATE without an offer), made as for an inbound call's, or the status that
        refuses it."""
        call = self.calls.get(call_id)
        if call is None or call.ended:
            return 481
        answer = self._updated_session(call, offer, method, srtp="off")  # (we offer plain RTP only)
        if not isinstance(answer, int):
            self._arm_session(call, session_expires, now)
        return answer

    def _updated_session(self, call: Call, offer: SessionDescription | None, method: str,
                         srtp: str | None = None) -> bytes | int:
        """The call's session under a re-offer (hold, resume, a new remote address; None: no offer,
        ours stands): our SDP answer, or 488 when the offer is unusable (the session stays). An
        UPDATE without an offer (a session refresh, RFC 4028 §7.4) gets none: its 2xx may not carry
        SDP (RFC 3311 §5.2); a re-INVITE without one gets our offer in its 200."""
        if offer is None and method == "UPDATE":
            return b""
        media, index = call.media, 0
        if offer is not None:
            try:
                media, index = self._negotiate(offer, [call.info.codec], srtp)  # the call keeps its codec
                if bool(media.crypto) != (call.srtp is not None):
                    raise SdpError("a re-offer may not switch between RTP and SRTP")
            except SdpError as exc:
                log.info("call %s: re-offer refused: %s", call.info.call_id, exc)
                return 488
            theirs = choose_crypto(list(media.crypto)) if media.crypto else None
            if call.srtp is not None and theirs is not None:
                call.srtp = call.srtp.rekeyed(theirs)  # a new key of theirs: a new inbound session
            call.media = media
            call.rtp_source = None  # the caller may have moved: latch again on its next packet
            if call.sender is not None:
                call.sender.paused = call.held
            log.info("call %s: %s", call.info.call_id, "on hold" if call.held else "active")
        call.sdp_version += 1
        if offer is None:  # no offer in the re-INVITE: ours is the current session
            offer = call.incoming.offer
            media, index = self._negotiate(offer, [call.info.codec], srtp)
        return build_answer(offer, media, index, self.settings.advertised_host, call.local_port, call.session_id,
                            call.sdp_version, crypto=call.crypto)

    def _negotiate(self, offer: SessionDescription, codecs: list[str],
                   srtp: str | None = None) -> tuple[NegotiatedAudio, int]:
        """The offer's audio stream under our codec list and SRTP mode (``srtp``: the settings' unless
        given; raises SdpError, also for an SRTP stream none of whose a=crypto lines we can key:
        answering it with plain RTP would be wrong)."""
        media, index = negotiate(offer, codecs, srtp or self.settings.srtp, frozenset(SRTP_SUITES))
        if media.crypto and choose_crypto(list(media.crypto)) is None:
            raise SdpError("no usable a=crypto offered (key length, MKI or session parameters)")
        return media, index

    def _digit(self, call: Call, digit: DtmfDigit) -> None:
        call.digits.append(digit)
        self._actions.append(Digit(call, digit))  # logged where it is delivered, in the call's log context
        if self.settings.barge_in and not call.ended and not call.handles_digits:
            self.barge_in(call)

    def barge_in(self, call: Call) -> None:
        """Stop the current prompt now (the I/O layer flushes the queue and cancels the source)."""
        self._actions.append(BargeIn(call))

    def _rtcp_report(self, call: Call, final: bool) -> SendRtcp | None:
        """A sender report (with a block about the caller's stream) and our CNAME; BYE at the end."""
        sender = call.sender
        if sender is None:
            return None
        block = call.rx.report_block()
        sr = SenderReport(sender.ssrc, self.wall_clock(), sender.timestamp, sender.packets_sent,
                          sender.packets_sent * FRAME_SAMPLES, [block] if block else [])
        packet = sr.serialize() + sdes_cname(sender.ssrc, f"sip-tts@{self.settings.advertised_host}")
        if final:
            packet += rtcp_bye(sender.ssrc)
        if call.srtp is not None:
            packet = call.srtp.protect_rtcp(packet)
        return SendRtcp(call, packet, call.rtcp_remote or (call.remote[0], call.remote[1] + 1))

    def _send_rtcp(self, call: Call, now: float) -> None:
        report = self._rtcp_report(call, final=False)
        if report is None:
            return
        self._actions.append(report)
        call.rtcp_deadline = now + report_interval()
        self._push(call.rtcp_deadline, "rtcp", call)

    # -- the end ------------------------------------------------------------------------------
    def _finish(self, call: Call, reason: str, now: float) -> None:
        if call.ended:
            return
        binding = call.phase is Phase.BINDING
        call.phase = Phase.ENDED
        call.end_reason = reason
        call.session_deadline = call.rtcp_deadline = None
        sender = call.sender
        summary = dict(
            call_id=call.info.call_id, dialed=call.info.dialed, caller=call.info.caller, outcome=reason,
            duration_s=round(now - call.confirmed_at, 3) if call.confirmed_at is not None else 0.0,
            first_audio_ms=round((sender.first_audio_at - call.invite_at) * 1000, 1)
            if sender is not None and sender.first_audio_at is not None else None,
            late_frames=sender.skipped_frames if sender else 0, silence_frames=sender.silence_frames if sender else 0,
            codec=call.info.codec, **self.settings.summary)
        log.info("call %s to %s ended: %s", call.info.call_id, call.info.dialed, reason,
                 extra={"summary": True, **summary})
        self._actions.append(Ended(call, reason))
        if binding:
            # the socket is still being bound: media_bound releases the call; stop its audio now
            self._actions.append(BargeIn(call, announce=False))
            return
        if call.rx.ssrc is not None:
            peer = call.peer_report
            log.info("call %s media: caller's stream %d packets, %d lost, jitter %.1f ms%s", call.info.call_id,
                     call.rx.received, call.rx.lost, call.rx.jitter_ms,
                     f"; caller reports {peer.fraction_lost / 2.56:.1f}% loss, jitter {peer.jitter / 8:.1f} ms"
                     if peer else "")
        self._actions.append(Release(call, self._rtcp_report(call, final=True)))

    def _forget(self, call: Call) -> None:
        # Drop what refers back to the call (the sender, whose callbacks reach it), so an ended
        # call is freed by reference counting rather than left for the cycle collector, whose
        # pauses would make every other call's next packet late.
        call.phase = Phase.ENDED
        call.sender = None
        self.ports.release(call.local_port)
        self.calls.pop(call.info.call_id, None)
