"""The asyncio layer: one UDP socket for SIP, one per call for RTP, one pacer clock.

It feeds datagrams and time into the sans-IO ``UserAgent``, keeps ONE timer
handle for all SIP timers, turns UA events into call actions, and starts and
stops each call's audio. Nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import socket
import struct
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from structlog.contextvars import bind_contextvars, bound_contextvars

from media import FRAME_SAMPLES, SAMPLE_RATE, SILENCE, silence

from .call import AudioSource, Call, CallHandle, CallInfo, Router
from .admission import Admission, AdmissionPolicy
from .ports import PortAllocator, PortsExhausted
from .rtp.dtmf import DtmfDigit, Rfc4733Detector, parse_info
from .rtp.packet import RtpError, RtpPacket
from .rtp.pacer import FrameQueue, PacerClock, RtpSender
from .rtp.rtcp import RtcpError, SenderReport, parse_compound, report_interval, sdes_cname
from .rtp.rtcp import bye as rtcp_bye
from .sip.auth import DigestAuthenticator
from .sip.registration import Registration, RegistrationConfig
from .sip.uri import SipUri
from .sip.events import CallConfirmed, CallEnded, IncomingCall, InfoReceived, SessionUpdate
from .sip.message import SipParseError, frame_length
from .sip.sdp import SdpError, build_answer, negotiate
from .sip.useragent import UserAgent, UserAgentConfig

log = logging.getLogger("telephony.server")


@dataclass
class ServerSettings:
    """What the server runs with; every default is config/schema.py's (the app maps it here)."""

    listen_host: str
    listen_port: int
    advertised_host: str
    rtp_port_min: int
    rtp_port_max: int
    codecs: list[str]
    max_calls: int
    hangup_after_prompt_ms: int
    user_agent: str
    media_timeout: float  # no RTP from the caller for this long: BYE (0: off)
    dscp: int  # DSCP of our RTP (46 = EF); 0: leave unmarked
    barge_in: bool  # a DTMF digit stops the prompt at once
    tcp: bool
    tcp_idle_timeout: float  # close a connection idle this long that carries no call
    tcp_max_per_source: int
    max_message_bytes: int
    admission: AdmissionPolicy | None = None
    authenticator: DigestAuthenticator | None = None
    registration: RegistrationConfig | None = None
    summary: dict[str, str] = dataclasses.field(default_factory=dict)  # more fields of each call's summary line


class ServerHooks(Protocol):
    """What the server reports as calls go (metrics live outside telephony/)."""

    def call_answered(self, call: Call, seconds: float) -> None: ...

    def call_ended(self, call: Call, reason: str) -> None: ...


class _SipProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: "SipServer") -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.server._on_sip_datagram(data, addr[:2])

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket error: %s", exc)


def _call_context(call: Call):
    """Bind the call's identity to every log line written inside the ``with`` block."""
    return bound_contextvars(call_id=call.info.call_id, dialed=call.info.dialed)


class _TcpConnection(asyncio.Protocol):
    """One SIP-over-TCP connection: messages framed by Content-Length (RFC 3261 §18.3)."""

    def __init__(self, server: "SipServer") -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.last_activity = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = tuple(transport.get_extra_info("peername")[:2])  # type: ignore[assignment]
        self.last_activity = self.server._now()
        if not self.server._tcp_register(self):
            transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.server._now()
        self.buffer += data
        while self.buffer:
            try:
                n = frame_length(bytes(self.buffer))
            except SipParseError:
                log.info("closing TCP connection from %s: unframeable data", self.peer)
                self.buffer.clear()
                assert self.transport is not None
                self.transport.close()
                return
            if n is None:
                if len(self.buffer) > self.server.settings.max_message_bytes:
                    log.info("closing TCP connection from %s: message over the size limit", self.peer)
                    self.buffer.clear()
                    assert self.transport is not None
                    self.transport.close()
                return
            message = bytes(self.buffer[:n])
            del self.buffer[:n]
            self.server._on_sip_message(message, self.peer, "TCP")

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._tcp_unregister(self)


class _CallSocket(asyncio.DatagramProtocol):
    """A call's RTP or RTCP socket: what arrives goes to the server method it was made for."""

    def __init__(self, on_datagram: Callable[[Call, bytes, tuple[str, int]], None], call: Call) -> None:
        self.on_datagram = on_datagram
        self.call = call

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.on_datagram(self.call, data, addr[:2])

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while the caller is gone: nothing to do


class SipServer:
    def __init__(self, settings: ServerSettings, router: Router, hooks: ServerHooks | None = None,
                 available: Callable[[], bool] | None = None) -> None:
        self.settings = settings
        self.router = router
        self.hooks = hooks
        # Can new calls be served (the audio source's dependencies are up)? Checked every second:
        # while not, INVITEs and OPTIONS get 503, so a load balancer sends calls elsewhere.
        self.available = available
        self.ports = PortAllocator(settings.rtp_port_min, settings.rtp_port_max)
        self.calls: dict[str, Call] = {}
        self.ua: UserAgent | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.clock: PacerClock | None = None
        self._tcp: dict[tuple[str, int], _TcpConnection] = {}
        self._tcp_server: asyncio.AbstractServer | None = None
        self._tcp_sweeper: asyncio.TimerHandle | None = None
        self._media_sweeper: asyncio.TimerHandle | None = None

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.clock = PacerClock(self._loop)
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _SipProtocol(self), local_addr=(self.settings.listen_host, self.settings.listen_port))
        self._transport = transport
        port = transport.get_extra_info("sockname")[1]
        if self.settings.media_timeout > 0 or self.available is not None:
            self._media_sweeper = self._loop.call_later(1.0, self._sweep_media)
        if self.settings.tcp:
            self._tcp_server = await self._loop.create_server(
                lambda: _TcpConnection(self), self.settings.listen_host, port, reuse_address=True)
            self._tcp_sweeper = self._loop.call_later(5.0, self._sweep_tcp)
        self.ua = UserAgent(UserAgentConfig(self.settings.advertised_host, port, self.settings.user_agent),
                            max_calls=self.settings.max_calls)
        if self.settings.admission is not None:
            self.ua.admission = Admission(self.settings.admission)
        self.ua.authenticator = self.settings.authenticator
        if self.settings.registration is not None:
            await self._start_registration(self.settings.registration, port)
        log.info("listening on udp %s:%d (advertised %s)", self.settings.listen_host, port,
                 self.settings.advertised_host)

    async def _start_registration(self, cfg: RegistrationConfig, port: int) -> None:
        """Resolve the registrar once (the sans-IO core has no resolver) and start registering."""
        assert self.ua is not None and self._loop is not None
        uri = SipUri.parse(cfg.registrar_uri)
        infos = await self._loop.getaddrinfo(uri.host.strip("[]"), uri.port or 5060, type=socket.SOCK_DGRAM)
        registrar = infos[0][4][:2]
        user = SipUri.parse(cfg.aor).user or "sip-tts"
        host = self.settings.advertised_host
        cfg.contact = cfg.contact or f"sip:{user}@{f'[{host}]' if ':' in host else host}:{port}"
        self.ua.start_registration(Registration(cfg, f"{host}:{port}"), registrar)
        log.info("registering %s at %s (%s:%d)", cfg.aor, cfg.registrar_uri, *registrar)
        self._pump()

    @property
    def port(self) -> int:
        assert self.ua is not None
        return self.ua.config.port

    async def drain(self, timeout: float, interrupted: asyncio.Event | None = None) -> int:
        """Refuse new calls (503, OPTIONS too) and let the ones in progress finish.

        Returns how many calls were still up when ``timeout`` passed (or ``interrupted`` was set).
        """
        assert self.ua is not None and self._loop is not None
        self.ua.draining = True
        log.info("draining: %d call(s) in progress, new calls get 503", len(self.calls))
        deadline = self._loop.time() + timeout
        while self.calls and self._loop.time() < deadline:
            if interrupted is not None and interrupted.is_set():
                break
            await asyncio.sleep(0.05)
        return len(self.calls)

    async def stop(self, grace: float = 2.0) -> None:
        """Refuse new calls, hang up the ones in progress, wait for their BYEs, close."""
        assert self.ua is not None and self._loop is not None
        self.ua.draining = True
        for call in list(self.calls.values()):
            self._hangup(call, "shutdown")
        self._pump()
        deadline = self._loop.time() + grace
        while self.ua.awaiting_responses and self._loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self._timer:
            self._timer.cancel()
        if self.clock:
            self.clock.close()
        if self._transport:
            self._transport.close()
        if self._tcp_sweeper is not None:
            self._tcp_sweeper.cancel()
        if self._media_sweeper is not None:
            self._media_sweeper.cancel()
        if self._tcp_server is not None:
            self._tcp_server.close()
            for conn in list(self._tcp.values()):
                if conn.transport is not None:
                    conn.transport.close()

    # -- SIP I/O ------------------------------------------------------------------
    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _on_sip_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self._on_sip_message(data, addr, "UDP")

    def _on_sip_message(self, data: bytes, addr: tuple[str, int], transport: str) -> None:
        assert self.ua is not None
        self.ua.receive_datagram(data, addr, self._now(), transport)
        self._pump()

    # -- TCP connections --------------------------------------------------------------
    def _tcp_register(self, conn: _TcpConnection) -> bool:
        same_source = sum(1 for peer in self._tcp if peer[0] == conn.peer[0])
        if same_source >= self.settings.tcp_max_per_source:
            log.warning("refused TCP connection from %s: %d already open", conn.peer[0], same_source)
            return False
        self._tcp[conn.peer] = conn
        return True

    def _tcp_unregister(self, conn: _TcpConnection) -> None:
        if self._tcp.get(conn.peer) is conn:
            del self._tcp[conn.peer]

    def _sweep_tcp(self) -> None:
        """Close connections idle past the timeout that no call still needs (for its BYE)."""
        now = self._now()
        in_use = {c.incoming.source for c in self.calls.values()}
        for peer, conn in list(self._tcp.items()):
            if now - conn.last_activity > self.settings.tcp_idle_timeout and peer not in in_use:
                log.info("closing idle TCP connection from %s", peer)
                if conn.transport is not None:
                    conn.transport.close()
        assert self._loop is not None
        self._tcp_sweeper = self._loop.call_later(5.0, self._sweep_tcp)

    def _send(self, data: bytes, addr: tuple[str, int], transport: str) -> None:
        conn = self._tcp.get(addr) if transport == "TCP" else None
        if conn is not None and conn.transport is not None:
            conn.transport.write(data)
        elif self._transport is not None:
            self._transport.sendto(data, addr)

    def _on_sip_timer(self) -> None:
        assert self.ua is not None
        self._timer = None
        self.ua.handle_timer(self._now())
        self._pump()

    def _pump(self) -> None:
        """Handle UA events, send what the UA has queued and re-arm the single SIP timer."""
        assert self.ua is not None and self._loop is not None
        for _ in range(100):  # events can produce more events (e.g. reject); bounded
            events = self.ua.next_events()
            if not events:
                break
            for event in events:
                call_id = getattr(event, "call_id", None)
                known = self.calls.get(call_id) if call_id else None
                with bound_contextvars(call_id=call_id, dialed=known.info.dialed if known else
                                       getattr(event, "dialed", None)):
                    if isinstance(event, IncomingCall):
                        self._on_incoming(event)
                    elif isinstance(event, CallConfirmed):
                        self._on_confirmed(event.call_id)
                    elif isinstance(event, CallEnded):
                        self._on_ended(event.call_id, event.reason)
                    elif isinstance(event, SessionUpdate):
                        self._on_session_update(event)
                    elif isinstance(event, InfoReceived):
                        self._on_info(event)
        for data, addr, transport in self.ua.messages_to_send():
            try:
                self._send(data, addr, transport)
            except OSError as exc:
                log.warning("SIP send to %s failed: %s", addr, exc)
        when = self.ua.get_timer()
        if self._timer is not None and (when is None or abs(self._timer.when() - when) > 1e-4):
            self._timer.cancel()
            self._timer = None
        if when is not None and self._timer is None:
            self._timer = self._loop.call_at(when, self._on_sip_timer)

    # -- calls --------------------------------------------------------------------
    def _on_incoming(self, ev: IncomingCall) -> None:
        assert self.ua is not None
        now = self._now()
        if len(self.calls) >= self.settings.max_calls:
            self.ua.reject(ev.call_id, 503, now, [("Retry-After", "5")])
            return
        try:
            media, index = negotiate(ev.offer, self.settings.codecs)
        except SdpError as exc:
            log.info("call %s: %s", ev.call_id, exc)
            self.ua.reject(ev.call_id, 488, now, [("Warning", '304 sip-tts "No G.711 codec offered"')])
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
            self.ua.reject(ev.call_id, 503, now, [("Retry-After", "5")])
            return
        queue = FrameQueue(SILENCE[media.codec])
        call = Call(info, ev, media, port, queue, CallHandle(info, queue), invite_at=time.monotonic(),
                    handles_digits=bool(getattr(source, "handles_digits", False)),
                    early_media=bool(getattr(source, "early_media", False)))
        self.calls[ev.call_id] = call
        call.held = media.direction in ("sendonly", "inactive")
        if media.dtmf_payload_type is not None:
            call.dtmf = Rfc4733Detector(SAMPLE_RATE)
        self._arm_session_timer(call, ev.session_expires)
        # Synthesis starts now, while the socket binds and the 200 OK travels.
        call.producer = asyncio.ensure_future(self._produce(call, source))
        call.session_id = secrets.randbelow(2**31)
        answer = lambda rtp_port: build_answer(  # noqa: E731
            ev.offer, media, index, self.settings.advertised_host, rtp_port, call.session_id)
        asyncio.ensure_future(self._bind_and_answer(call, answer))

    async def _bind_and_answer(self, call: Call, answer: Callable[[int], bytes]) -> None:
        assert self.ua is not None
        call.binding = True
        try:
            transport = await self._bind_rtp(call)
        finally:
            call.binding = False
        if transport is None:
            self._cleanup(call)
            self.ua.reject(call.info.call_id, 503, self._now(), [("Retry-After", "5")])
        elif call.ended:  # cancelled or hung up while binding
            transport.close()
            self._cleanup(call)
        else:
            call.transport = transport
            await self._bind_rtcp(call)
            if call.early_media:
                # 183 with SDP and the audio at once; at its end the call is refused (480), never answered
                self.ua.progress(call.info.call_id, answer(call.local_port), self._now())
                self._start_media(call)
                self._pump()
                return
            self.ua.answer(call.info.call_id, answer(call.local_port), self._now())
            if self.hooks is not None:
                self.hooks.call_answered(call, time.monotonic() - call.invite_at)
        self._pump()

    async def _bind_rtcp(self, call: Call) -> None:
        """RTCP on the odd port above RTP (RFC 3550 §11); calls work without it if it is taken."""
        assert self._loop is not None
        family = socket.AF_INET6 if ":" in self.settings.listen_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((self.settings.listen_host, call.local_port + 1))
        except OSError:
            sock.close()
            return
        sock.setblocking(False)
        call.rtcp, _ = await self._loop.create_datagram_endpoint(lambda: _CallSocket(self._on_rtcp, call), sock=sock)

    async def _bind_rtp(self, call: Call) -> asyncio.DatagramTransport | None:
        """Bind the call's RTP socket; a port taken by another process is skipped.

        The socket is bound here, synchronously, and handed to asyncio: with a host
        string asyncio would resolve it in a thread pool first, a thread hop per call
        that showed up as INVITE→200 latency under load.
        """
        assert self._loop is not None
        family = socket.AF_INET6 if ":" in self.settings.listen_host else socket.AF_INET
        for _ in range(8):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((self.settings.listen_host, call.local_port))
            except OSError:
                sock.close()
                self.ports.skip(call.local_port)
                try:
                    call.local_port = self.ports.acquire()
                except PortsExhausted:
                    return None
                continue
            sock.setblocking(False)
            if self.settings.dscp:
                tos = self.settings.dscp << 2  # DSCP in the upper six bits of TOS / traffic class
                try:
                    if family == socket.AF_INET:
                        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
                    else:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
                except OSError:
                    pass
            transport, _ = await self._loop.create_datagram_endpoint(lambda: _CallSocket(self._on_rtp, call), sock=sock)
            return transport
        return None

    async def _produce(self, call: Call, source: AudioSource) -> None:
        # This task's own context: every line logged while producing the call's audio carries it.
        bind_contextvars(call_id=call.info.call_id, dialed=call.info.dialed, caller=call.info.caller)
        try:
            await source.run(call.handle)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call %s: audio source failed", call.info.call_id)
        tail = int(self.settings.hangup_after_prompt_ms / 1000 * SAMPLE_RATE)
        if tail:
            call.queue.push(silence(call.info.codec, tail))
        call.queue.finish()

    def _on_confirmed(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is None or call.ended or call.transport is None or self.clock is None:
            return
        self._start_media(call)

    def _start_media(self, call: Call) -> None:
        assert call.transport is not None and self.clock is not None
        call.confirmed_at = time.monotonic()
        call.confirmed_loop_time = self._now()
        transport = call.transport
        call.sender = RtpSender(
            payload_type=call.media.payload_type, codec=call.info.codec,
            send=lambda data: transport.sendto(data, call.remote), queue=call.queue,  # remote may move (re-INVITE)
            on_done=lambda: self._on_prompt_done(call))
        call.sender.paused = call.held
        self.clock.add(call.sender)
        self._schedule_rtcp(call)

    def _on_session_update(self, ev: SessionUpdate) -> None:
        """re-INVITE/UPDATE: hold, resume, a new remote address; refreshes the session timer."""
        assert self.ua is not None
        call = self.calls.get(ev.call_id)
        now = self._now()
        if call is None or call.ended:
            self.ua.reject_update(ev.call_id, 481, now)
            return
        media, index = call.media, 0
        offer = ev.offer
        if offer is not None:
            try:
                media, index = negotiate(offer, [call.info.codec])  # the call keeps its codec
            except SdpError as exc:
                log.info("call %s: re-offer refused: %s", ev.call_id, exc)
                self.ua.reject_update(ev.call_id, 488, now)
                return
            call.media = media
            call.latched = False  # the caller may have moved: latch again on its next packet
            call.held = media.direction in ("sendonly", "inactive")
            if call.sender is not None:
                call.sender.paused = call.held
            log.info("call %s: %s", ev.call_id, "on hold" if call.held else "active")
        call.sdp_version += 1
        if offer is None:  # no offer in the re-INVITE: ours is the current session
            offer = call.incoming.offer
            media, index = negotiate(offer, [call.info.codec])
        sdp = build_answer(offer, media, index, self.settings.advertised_host, call.local_port, call.session_id,
                           call.sdp_version)
        self.ua.answer_update(ev.call_id, sdp, now)
        self._arm_session_timer(call, self.ua.session_expires(ev.call_id))

    # -- the caller's media --------------------------------------------------------
    def _on_rtp(self, call: Call, data: bytes, addr: tuple[str, int]) -> None:
        now = self._now()
        call.last_rtp_at = now
        if len(data) >= 12 and data[0] >> 6 == 2:
            seq, ts, ssrc = struct.unpack_from("!HII", data, 2)
            call.rx.feed(ssrc, seq, ts, now)
        if not call.latched and addr[1] != 0:  # (port 0: a raw-socket sender, e.g. SIPp's pcap player)
            # Symmetric RTP (RFC 4961): send where the caller's packets really come from,
            # decided once per call (and again after a re-INVITE): the SDP may lie behind NAT.
            call.latched = True
            if addr != call.remote:
                log.info("call %s: RTP latched to %s:%d (SDP said %s:%d)", call.info.call_id, *addr, *call.remote)
                call.media = dataclasses.replace(call.media, remote_host=addr[0], remote_port=addr[1])
        if call.dtmf is None or len(data) < 12 or (data[1] & 0x7F) != call.media.dtmf_payload_type:
            return
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            return
        for digit in call.dtmf.feed(packet.timestamp, packet.payload):
            self._on_digit(call, digit)

    def _on_rtcp(self, call: Call, data: bytes, addr: tuple[str, int]) -> None:
        call.rtcp_remote = addr
        try:
            reports = parse_compound(data)
        except RtcpError:
            return
        for report in reports:
            for block in report.blocks:
                if call.sender is not None and block.ssrc == call.sender.ssrc:
                    call.peer_report = block

    def _schedule_rtcp(self, call: Call) -> None:
        if self._loop is not None and not call.ended:
            call.rtcp_timer = self._loop.call_later(report_interval(), self._send_rtcp, call)

    def _send_rtcp(self, call: Call, final: bool = False) -> None:
        """A sender report (with a block about the caller's stream) and our CNAME; BYE at the end."""
        sender = call.sender
        if call.rtcp is None or sender is None:
            return
        block = call.rx.report_block()
        sr = SenderReport(sender.ssrc, time.time(), sender.timestamp, sender.packets_sent,
                          sender.packets_sent * FRAME_SAMPLES, [block] if block else [])
        packet = sr.serialize() + sdes_cname(sender.ssrc, f"sip-tts@{self.settings.advertised_host}")
        if final:
            packet += rtcp_bye(sender.ssrc)
        dest = call.rtcp_remote or (call.remote[0], call.remote[1] + 1)
        try:
            call.rtcp.sendto(packet, dest)
        except OSError:
            pass
        if not final:
            self._schedule_rtcp(call)

    def _end_rtcp(self, call: Call) -> None:
        """Final SR + BYE, and the call's media summary line."""
        if call.rtcp_timer is not None:
            call.rtcp_timer.cancel()
        if call.rtcp is not None:
            self._send_rtcp(call, final=True)
            call.rtcp.close()
            call.rtcp = None
        if call.rx.ssrc is not None:
            peer = call.peer_report
            log.info("call %s media: caller's stream %d packets, %d lost, jitter %.1f ms%s", call.info.call_id,
                     call.rx.received, call.rx.lost, call.rx.jitter_ms,
                     f"; caller reports {peer.fraction_lost / 2.56:.1f}% loss, jitter {peer.jitter / 8:.1f} ms"
                     if peer else "")

    def _on_info(self, ev: InfoReceived) -> None:
        call = self.calls.get(ev.call_id)
        digit = parse_info(ev.content_type, ev.body)
        if call is not None and digit is not None:
            self._on_digit(call, digit)

    def _on_digit(self, call: Call, digit: DtmfDigit) -> None:
        with _call_context(call):
            self._digit(call, digit)

    def _digit(self, call: Call, digit: DtmfDigit) -> None:
        call.digits.append(digit)
        log.info("call %s: DTMF %s (%d ms, %s)", call.info.call_id, digit.digit, digit.duration_ms, digit.source)
        call.handle.digit_arrived(digit)
        if self.settings.barge_in and not call.ended and not call.handles_digits:
            self.barge_in(call)

    def barge_in(self, call: Call) -> None:
        """Stop the current prompt now: queued frames flushed, synthesis cancelled."""
        call.queue.flush()
        if call.producer is not None and not call.producer.done():
            call.producer.cancel()
        call.queue.finish()  # with nothing queued the pacer ends the prompt on its next slot
        log.info("call %s: barge-in", call.info.call_id)

    def _check_available(self, ua: UserAgent) -> None:
        """``available`` false: new INVITEs and OPTIONS get 503 until it is true again."""
        assert self.available is not None
        down = not self.available()
        if down != ua.unavailable:
            log.warning("audio source down: new calls get 503" if down else "audio source back: taking calls")
            ua.unavailable = down

    def _end_silent_calls(self) -> None:
        """Media timeout: no RTP from the caller for ``media_timeout`` seconds ends the call."""
        now = self._now()
        for call in list(self.calls.values()):
            if call.ended or call.confirmed_at is None or call.held:
                continue
            since = call.last_rtp_at if call.last_rtp_at is not None else call.confirmed_loop_time
            if since is not None and now - since > self.settings.media_timeout:
                with _call_context(call):
                    log.info("call %s: no RTP for %.0f s", call.info.call_id, now - since)
                    self._hangup(call, "media-timeout")

    def _sweep_media(self) -> None:
        """Once a second: whether new calls can be served, and calls whose RTP stopped."""
        if self.available is not None and self.ua is not None:
            self._check_available(self.ua)
        if self.settings.media_timeout > 0:
            self._end_silent_calls()
        self._pump()
        assert self._loop is not None
        self._media_sweeper = self._loop.call_later(1.0, self._sweep_media)

    def _arm_session_timer(self, call: Call, seconds: int | None) -> None:
        """RFC 4028: the caller refreshes; if it does not within the interval, the session is over."""
        if call.session_timer is not None:
            call.session_timer.cancel()
            call.session_timer = None
        if seconds and self._loop is not None:
            call.session_timer = self._loop.call_later(seconds, self._on_session_expired, call)

    def _on_session_expired(self, call: Call) -> None:
        log.info("call %s: session expired without a refresh", call.info.call_id)
        self._hangup(call, "session-expired")
        self._pump()

    def _on_prompt_done(self, call: Call) -> None:
        with _call_context(call):
            self._hangup(call, "prompt-done")
        self._pump()

    def _hangup(self, call: Call, reason: str) -> None:
        assert self.ua is not None
        if call.ended:
            return
        self.ua.hangup(call.info.call_id, self._now())
        self._finish(call, reason)

    def _on_ended(self, call_id: str, reason: str) -> None:
        call = self.calls.get(call_id)
        if call is not None:
            self._finish(call, reason)

    def _finish(self, call: Call, reason: str) -> None:
        if call.ended:
            return
        with _call_context(call):
            self._finish_bound(call, reason)

    def _finish_bound(self, call: Call, reason: str) -> None:
        call.ended = True
        call.end_reason = reason
        sender = call.sender
        summary = dict(
            call_id=call.info.call_id, dialed=call.info.dialed, caller=call.info.caller, outcome=reason,
            duration_s=round(time.monotonic() - call.confirmed_at, 3) if call.confirmed_at else 0.0,
            first_audio_ms=round((sender.first_audio_at - call.invite_at) * 1000, 1)
            if sender is not None and sender.first_audio_at is not None else None,
            late_frames=sender.skipped_frames if sender else 0, silence_frames=sender.silence_frames if sender else 0,
            codec=call.info.codec, **self.settings.summary)
        log.info("call %s to %s ended: %s", call.info.call_id, call.info.dialed, reason,
                 extra={"summary": True, **summary})
        if self.hooks is not None:
            self.hooks.call_ended(call, reason)
        if call.binding:
            # still binding its socket: _bind_and_answer cleans up when it resumes
            if call.producer is not None:
                call.producer.cancel()
        else:
            self._cleanup(call)

    def _cleanup(self, call: Call) -> None:
        call.ended = True
        if call.cleaned:
            return
        call.cleaned = True
        if call.session_timer is not None:
            call.session_timer.cancel()
        self._end_rtcp(call)
        if call.sender is not None and self.clock is not None:
            self.clock.remove(call.sender)
        if call.producer is not None and not call.producer.done():
            call.producer.cancel()
        if call.transport is not None:
            call.transport.close()
            call.transport = None
        # Drop what refers back to the call (the sender's callbacks, the audio task), so an
        # ended call is freed by reference counting rather than left for the cycle collector,
        # whose pauses would make every other call's next packet late.
        call.sender = None
        call.producer = None
        self.ports.release(call.local_port)
        self.calls.pop(call.info.call_id, None)
