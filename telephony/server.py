"""The asyncio layer: sockets, the pump and the one clock, around two sans-IO cores.

SIP datagrams and TCP messages go into the ``UserAgent``; its events, each call's RTP and RTCP,
and the time go into the ``CallTable`` (``calls.py``); what they return is carried out here:
datagrams sent, sockets bound and closed, audio sources started, RTP senders put on the pacer
clock. One timer handle serves both cores' timers. Nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Callable

from structlog.contextvars import bound_contextvars

from .addresses import for_v6_socket
from .admission import Admission, AdmissionPolicy
from .call import Router
from .calls import Call, CallSettings, CallTable
from .media_io import MediaIO, ServerHooks
from .outbound_io import OutboundIO
from .ports import PortAllocator
from .rtp.pacer import PacerClock
from .sip.auth import DigestAuthenticator
from .sip.refer import TransferEvent
from .sip.registration import Registration, RegistrationConfig
from .sip.uri import SipUri
from .sip.useragent import UserAgent, UserAgentConfig
from .tls import TlsSettings, start_listener as start_tls_listener
from .transports import SipDatagrams, TcpConnection, TcpConnections

log = logging.getLogger("telephony.server")


@dataclass
class ServerSettings:
    """What the server runs with; every default is config/schema.py's (the app maps it here)."""

    listen_host: str
    listen_port: int
    rtp_port_min: int
    rtp_port_max: int
    calls: CallSettings
    user_agent: str
    dscp: int  # DSCP of our RTP (46 = EF); 0: leave unmarked
    tcp: bool
    tcp_idle_timeout: float  # close a connection idle this long that carries no call
    tcp_max_per_source: int
    max_message_bytes: int
    admission: AdmissionPolicy | None = None
    authenticator: DigestAuthenticator | None = None
    registration: RegistrationConfig | None = None
    tls: TlsSettings | None = None  # set: also listen for SIP over TLS (telephony/tls.py)


class SipServer:
    def __init__(self, settings: ServerSettings, router: Router, hooks: ServerHooks | None = None,
                 available: Callable[[], bool] | None = None) -> None:
        self.settings = settings
        self.router = router
        self.hooks = hooks
        # Can new calls be served (the audio source's dependencies are up)? Checked every second:
        # while not, INVITEs and OPTIONS get 503, so a load balancer sends calls elsewhere.
        self.available = available
        self.ua: UserAgent | None = None
        self.table: CallTable | None = None
        self.clock: PacerClock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp = TcpConnections(settings.tcp_max_per_source, settings.max_message_bytes, self._on_sip_message)
        self._media: MediaIO | None = None
        self.outbound: OutboundIO | None = None  # calls we place (POST /v1/calls)
        self._timer: asyncio.TimerHandle | None = None
        self._poller: asyncio.TimerHandle | None = None
        self._v6 = ":" in settings.listen_host  # IPv6 sockets: IPv4 peers as ::ffff:a.b.c.d

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self.clock = PacerClock(loop)
        s = self.settings
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: SipDatagrams(self._on_sip_message), local_addr=(s.listen_host, s.listen_port))
        port = self._udp.get_extra_info("sockname")[1]
        if s.tcp:
            await self._tcp.listen(loop, s.listen_host, port, s.tcp_idle_timeout, self._now, self._call_sources)
        tls_port = None
        if s.tls is not None:
            tls_port = s.tls.port = await start_tls_listener(self._tcp, s.tls, loop, s.tcp_idle_timeout, self._now,
                                                             self._call_sources)
            log.info("listening on tls %s:%d", s.tls.host, tls_port)
        self.ua = UserAgent(UserAgentConfig(s.calls.advertised_host, port, s.user_agent, tls_port=tls_port),
                            max_calls=s.calls.max_calls)
        if s.admission is not None:
            self.ua.admission = Admission(s.admission)
        self.ua.authenticator = s.authenticator
        self.table = CallTable(self.ua, s.calls, self.router, PortAllocator(s.rtp_port_min, s.rtp_port_max))
        self.table.start(self._now())
        self._media = MediaIO(self.table, self.clock, loop, s.listen_host, s.dscp, s.calls.hangup_after_prompt_ms,
                              self.hooks, self._pump)
        self.outbound = OutboundIO(self.table, port, lambda d, a, t: self._send(d, a, t, udp_fallback=False),
                                    self._connect, loop, self._pump)
        self._media.control = self.outbound
        if self.available is not None:
            self._poller = loop.call_later(1.0, self._poll_available)
        if s.registration is not None:
            await self._start_registration(s.registration, port)
        log.info("listening on udp %s:%d (advertised %s)", s.listen_host, port, s.calls.advertised_host)
        self._pump()

    async def _start_registration(self, cfg: RegistrationConfig, port: int) -> None:
        """Resolve the registrar once (the sans-IO core has no resolver) and start registering."""
        assert self.ua is not None and self._loop is not None
        uri = SipUri.parse(cfg.registrar_uri)
        infos = await self._loop.getaddrinfo(uri.host.strip("[]"), uri.port or 5060, type=socket.SOCK_DGRAM)
        registrar = infos[0][4][:2]
        user = SipUri.parse(cfg.aor).user or "sip-tts"
        host = self.settings.calls.advertised_host
        cfg.contact = cfg.contact or f"sip:{user}@{f'[{host}]' if ':' in host else host}:{port}"
        self.ua.start_registration(Registration(cfg, f"{host}:{port}"), registrar)
        log.info("registering %s at %s (%s:%d)", cfg.aor, cfg.registrar_uri, *registrar)
        self._pump()

    @property
    def port(self) -> int:
        assert self.ua is not None
        return self.ua.config.port

    @property
    def calls(self) -> dict[str, Call]:
        """The calls in progress (the table's)."""
        return self.table.calls if self.table is not None else {}

    def hangup(self, call_id: str, reason: str) -> bool:
        """End a call in progress (BYE, or the answer's refusal before it is confirmed); False: no such call."""
        call = self.calls.get(call_id)
        if call is None or call.ended or self.table is None:
            return False
        with bound_contextvars(call_id=call_id, dialed=call.info.dialed):
            self.table.hangup(call, reason, self._now())
        self._pump()
        return True

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
        assert self.ua is not None and self.table is not None and self._loop is not None
        self.ua.draining = True
        self.table.hangup_all("shutdown", self._now())
        self._pump()
        deadline = self._loop.time() + grace
        while self.ua.awaiting_responses and self._loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.outbound is not None:
            self.outbound.close()
        for handle in (self._timer, self._poller):
            if handle is not None:
                handle.cancel()
        if self.clock:
            self.clock.close()
        if self._udp:
            self._udp.close()
        self._tcp.close()

    # -- the pump: input, cores, actions, timer ---------------------------------------------
    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _call_sources(self) -> set[tuple[str, int]]:
        return self.table.sources() if self.table is not None else set()

    def _on_sip_message(self, data: bytes, addr: tuple[str, int], transport: str) -> None:
        assert self.ua is not None
        if self.outbound is None or not self.outbound.claim(data, addr, self._now()):
            self.ua.receive_datagram(data, addr, self._now(), transport)
        self._pump()

    def _on_timer(self) -> None:
        assert self.ua is not None and self.table is not None
        self._timer = None
        now = self._now()
        self.ua.handle_timer(now)
        self.table.handle_timer(now)
        if self.outbound is not None:
            self.outbound.handle_timer(now)
        self._pump()

    def _pump(self) -> None:
        """Feed UA events to the call table, carry out its actions, send what the UA has queued
        and re-arm the one timer."""
        assert self.ua is not None and self.table is not None and self._media is not None and self._loop is not None
        ua, table, media, outbound = self.ua, self.table, self._media, self.outbound
        for _ in range(100):  # events can produce more events (e.g. reject); bounded
            moved = outbound is not None and outbound.dispatch(self._now())
            events = ua.next_events()
            actions = table.actions()
            if not events and not actions and not moved:
                if outbound is None:
                    break
                outbound.flush()  # after the table's actions (a hangup's CANCEL or BYE)
                if not outbound.calls.has_events:  # (a send that failed: the call is unreachable)
                    break
                continue
            for action in actions:
                with bound_contextvars(call_id=action.call.info.call_id, dialed=action.call.info.dialed):
                    media.act(action)
            for event in events:
                if isinstance(event, TransferEvent) and outbound is not None:  # an inbound call's REFER
                    outbound.ua_transfer_event(event, self._now())
                    continue
                known = table.calls.get(getattr(event, "call_id", ""))
                with bound_contextvars(call_id=getattr(event, "call_id", None),
                                       dialed=known.info.dialed if known else getattr(event, "dialed", None)):
                    table.sip_event(event, self._now())
        for data, addr, transport in ua.messages_to_send():
            self._send(data, addr, transport)
        whens = [w for w in (ua.get_timer(), table.get_timer(), outbound and outbound.deadline()) if w is not None]
        when = min(whens) if whens else None
        if self._timer is not None and (when is None or abs(self._timer.when() - when) > 1e-4):
            self._timer.cancel()
            self._timer = None
        if when is not None and self._timer is None:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _send(self, data: bytes, addr: tuple[str, int], transport: str, udp_fallback: bool = True) -> bool:
        """One SIP message out; False if it could not go (no route; no TCP connection to ``addr``
        and no ``udp_fallback``: an outbound call's, which connects first)."""
        try:
            if transport != "UDP":
                if self._tcp.write(addr, data):
                    return True
                if not udp_fallback:
                    return False
            if self._udp is not None:
                self._udp.sendto(data, for_v6_socket(addr) if self._v6 else addr)
            return True
        except OSError as exc:
            log.warning("SIP send to %s failed: %s", addr, exc)
            return False

    async def _connect(self, addr: tuple[str, int]) -> None:
        """A TCP connection to ``addr`` (a trunk), kept in the connection table like accepted ones."""
        assert self._loop is not None
        await self._loop.create_connection(lambda: TcpConnection(self._tcp), addr[0], addr[1])

    def _poll_available(self) -> None:
        """Once a second: while the audio source's dependencies are down, INVITEs and OPTIONS get 503."""
        assert self.available is not None and self._loop is not None
        if self.ua is not None:
            down = not self.available()
            if down != self.ua.unavailable:
                log.warning("audio source down: new calls get 503" if down else "audio source back: taking calls")
                self.ua.unavailable = down
        self._poller = self._loop.call_later(1.0, self._poll_available)

