"""Calls we place, on the server's own sockets: the asyncio side of ``sip/outbound_calls.py``.

The SIP of each call is its ``OutboundCall``'s (sans-IO); its media is an ordinary call of the
``CallTable`` from the moment the INVITE goes out (``CallTable.dial``: the audio source starts
then, so speech is ready at the answer). This module joins them: it places calls (limits
checked before any INVITE exists), claims the SIP messages whose Call-ID is one of ours before
the ``UserAgent`` sees them, turns the calls' progress into table inputs (answered: media
flows; an outcome or a BYE: the call ends), sends what the calls queue (resolving a next-hop URI
without blocking, opening a TCP connection to a trunk when needed) and serves transfers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from .addresses import is_ip
from .call import AudioSource, CallInfo
from .calls import CallTable
from .ports import PortsExhausted
from .sip.events import IncomingCall, SessionUpdate
from .sip.outbound import CallProgress, OutboundCall, OutboundConfig, new_call_id
from .sip.outbound_calls import CallRefused, OutboundCalls, TrunkLimits
from .sip.refer import TransferEvent
from .sip.sdp import parse_sdp
from .sip.uac import hop_address
from .sip.uri import SipUri

log = logging.getLogger("telephony.outbound")
Address = tuple[str, int]
Progress = CallProgress | TransferEvent
_CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*([^\r\n]+?)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_VIA = re.compile(rb"^(?:via|v)[ \t]*:[ \t]*SIP/2\.0/([A-Za-z]+)", re.IGNORECASE | re.MULTILINE)
ENDING = {"busy", "declined", "not_found", "no_answer", "unreachable", "cancelled", "failed", "ended"}


@dataclass(frozen=True)
class Trunk:
    """A SIP trunk as the server dials through it (config/trunks.py maps server.yaml here)."""

    name: str
    host: str  # an IP address (names are resolved once, at start-up)
    port: int
    transport: str = "UDP"  # UDP or TCP
    domain: str = ""  # the host part of Request-URIs and From (default: host)
    username: str = ""
    password: str = ""
    outbound_proxy: str | None = None  # a SIP URI: every request's first hop
    limits: TrunkLimits = TrunkLimits()
    caller_id: str = ""  # From user when the request names none


@dataclass(frozen=True)
class Dial:
    """One call to place: ``target`` is the Request-URI (a trunk's numbers already formatted)."""

    target: str
    from_uri: str
    source: Callable[[CallInfo], AudioSource]  # the audio for the answered call, by codec
    trunk: Trunk | None = None
    from_display: str = ""
    ring_timeout_s: float = 30.0
    call_id: str = field(default_factory=new_call_id)  # chosen first: the caller files it before the INVITE


@dataclass
class _Pending:
    transfer: asyncio.Future | None = None


class OutboundIO:
    """Outbound calls on the server's sockets; see the module docstring."""

    def __init__(self, table: CallTable, sip_port: int, send: Callable[[bytes, Address, str], bool],
                 connect: Callable[[Address], Awaitable[None]], loop: asyncio.AbstractEventLoop,
                 pump: Callable[[], None]) -> None:
        self.table = table
        self.sip_port = sip_port
        self.calls = OutboundCalls(max_calls=table.settings.max_calls)
        self._send = send  # (data, addr, transport) -> sent (False: a transport error)
        self._connect = connect  # open a TCP connection to addr (the server's TcpConnections owns it)
        self._loop = loop
        self._pump = pump  # the server's: after an I/O result outside a pump pass
        self._pending: dict[str, _Pending] = {}
        self._inbound: dict[str, asyncio.Future] = {}  # transfers of inbound calls (the UA sends their REFER)
        self._resolved: dict[str, str] = {}
        self._tasks: set[asyncio.Task] = set()
        self.listeners: list[Callable[[Progress], None]] = []  # the application's: status callbacks, events
        table.outbound_hangup = self.hangup

    # -- the application's requests ------------------------------------------------------------
    def place(self, dial: Dial, now: float) -> str:
        """Send the INVITE (and start the audio); the Call-ID (``dial.call_id``). Raises ``CallRefused``
        (no INVITE sent: max_calls, the trunk's limits, no RTP port) or ``ValueError`` naming a bad
        field. The listeners may hear of the call before this returns: a send that fails at once
        makes it ``unreachable`` in this call's own pump."""
        table = self.table
        settings = table.settings
        if table.ua.draining:
            raise CallRefused("draining", "the server is draining (shutting down)")
        try:
            port = table.ports.acquire()
        except PortsExhausted:
            raise CallRefused("ports", "no free RTP port") from None
        host = settings.advertised_host
        hostport = f"[{host}]:{self.sip_port}" if ":" in host else f"{host}:{self.sip_port}"
        trunk = dial.trunk
        transport = trunk.transport if trunk else (SipUri.parse(dial.target).params.get("transport") or "UDP").upper()
        contact = f"sip:sip-tts@{hostport}" + (";transport=tcp" if transport == "TCP" else "")
        proxy = trunk.outbound_proxy if trunk else None
        if trunk is not None and proxy is None and (SipUri.parse(dial.target).host.strip("[]"), 
                                                     SipUri.parse(dial.target).port or 5060) != (trunk.host, trunk.port):
            proxy = f"sip:{_bracket(trunk.host)}:{trunk.port};lr"  # a SIP URI elsewhere: through the trunk
        try:
            config = OutboundConfig(
                target=dial.target, from_uri=dial.from_uri, contact=contact, via_host=hostport,
                media_address=host, media_port=port, transport=transport, from_display=dial.from_display,
                username=trunk.username if trunk else "", password=trunk.password if trunk else "",
                outbound_proxy=proxy, ring_timeout_s=dial.ring_timeout_s, codecs=tuple(settings.codecs),
                user_agent=table.ua.config.user_agent, call_id=dial.call_id)
            inbound = sum(1 for c in table.calls.values() if not c.outbound)
            call = self.calls.place(config, now, trunk.name if trunk else "", trunk.limits if trunk else None,
                                    inbound_active=inbound)
        except BaseException:
            table.ports.release(port)
            raise
        call_id = config.call_id
        self._pending[call_id] = _Pending()
        assert call.invite is not None
        dialed = SipUri.parse(dial.target).user or dial.target
        caller = SipUri.parse(dial.from_uri).user or ""
        first_hop = _hop(proxy or dial.target, transport)
        invite = IncomingCall(call_id, dialed, caller, call.invite, parse_sdp(call.invite.body), first_hop)
        info = CallInfo(call_id, dialed, caller, settings.codecs[0], {})
        table.dial(info, dial.source(info), invite, port, now, remake=dial.source)
        log.info("call %s: INVITE %s%s", call_id, dial.target, f" via trunk {trunk.name}" if trunk else "")
        self._pump()  # the INVITE out now, the audio source started
        return call_id

    def hangup(self, call_id: str, now: float) -> None:
        self.calls.hangup(call_id, now)

    async def transfer(self, call_id: str, target: str, timeout_s: float = 30.0) -> tuple[str, int | None, str]:
        """Blind transfer of an answered call (ours or an inbound one); its outcome once the
        NOTIFYs tell it. KeyError: no such call; RuntimeError: not answered, or one in progress."""
        pending = self._pending.get(call_id)
        if pending is None or not self.calls.owns(call_id):
            return await self._transfer_inbound(call_id, target, timeout_s)
        if pending.transfer is not None and not pending.transfer.done():
            raise RuntimeError("a transfer is already in progress")
        pending.transfer = self._loop.create_future()
        try:
            self.calls.transfer(call_id, target, self._loop.time(), timeout_s)  # RuntimeError: not answered yet
        except RuntimeError:
            pending.transfer = None
            raise
        self._pump()
        return await pending.transfer

    async def _transfer_inbound(self, call_id: str, target: str, timeout_s: float) -> tuple[str, int | None, str]:
        call = self.table.calls.get(call_id)
        if call is None or call.outbound or call.ended:
            raise KeyError(call_id)
        if call_id in self._inbound:
            raise RuntimeError("a transfer is already in progress")
        self.table.ua.transfer(call_id, target, self._loop.time(), timeout_s)  # the UA's REFER
        future = self._inbound[call_id] = self._loop.create_future()
        self._pump()
        try:
            return await future
        finally:
            self._inbound.pop(call_id, None)

    def ua_transfer_event(self, ev: TransferEvent, now: float) -> None:
        """An inbound call's transfer moved (the UA's REFER job): the call ends when it succeeded."""
        log.info("call %s: transfer %s%s", ev.call_id, ev.kind, f" ({ev.status} {ev.reason})" if ev.status else "")
        if ev.kind == "succeeded":
            call = self.table.calls.get(ev.call_id)
            if call is not None:
                self.table.hangup(call, "transferred", now)
        future = self._inbound.get(ev.call_id)
        if ev.kind in ("succeeded", "failed") and future is not None and not future.done():
            future.set_result((ev.kind, ev.status, ev.reason))

    def active(self, trunk: str | None = None) -> int:
        return self.calls.active(trunk)

    @property
    def tasks(self) -> int:
        return len(self._tasks)

    # -- the server's pump ------------------------------------------------------------------------
    def claim(self, data: bytes, addr: Address, now: float) -> bool:
        """Take a SIP message of one of our calls (by its Call-ID) before the UA sees it."""
        if not self.calls.calls:
            return False
        match = _CALL_ID.search(data, 0, data.find(b"\r\n\r\n") if b"\r\n\r\n" in data else len(data))
        if match is None:
            return False
        return self.calls.receive_datagram(match.group(1).decode("utf-8", "replace"), data, now, addr)

    def dispatch(self, now: float) -> bool:
        """The calls' progress into the table (and to the listeners); True if there was any."""
        events = self.calls.next_events()
        for ev in events:
            if isinstance(ev, SessionUpdate):  # a re-INVITE/UPDATE: answered as an inbound call's is
                self._session_update(ev, now)
                continue
            if isinstance(ev, CallProgress):
                self._progress(ev, now)
            else:
                self._transfer_event(ev)
            for listener in self.listeners:
                try:
                    listener(ev)
                except Exception:
                    log.exception("outbound progress listener failed")
        return bool(events)

    def flush(self) -> None:
        """Send what the calls queued."""
        for out in self.calls.messages_to_send():
            if out.addr is not None:  # a response to an in-dialog request: where it came from
                self._send(out.data, out.addr, _transport(out.data))
                continue
            assert out.uri is not None
            self._request(out.data, out.uri)

    def deadline(self) -> float | None:
        return self.calls.deadline()

    def handle_timer(self, now: float) -> None:
        self.calls.handle_timer(now)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()

    # -- internals ---------------------------------------------------------------------------------
    def _progress(self, ev: CallProgress, now: float) -> None:
        if ev.kind == "answered":
            assert ev.answer is not None and ev.remote_sdp is not None
            self.table.outbound_answered(ev.call_id, ev.answer, ev.remote_sdp, now)
        elif ev.kind in ENDING:
            self.table.outbound_ended(ev.call_id, ev.reason if ev.kind == "ended" else ev.kind, now)
            pending = self._pending.pop(ev.call_id, None)
            if pending is not None and pending.transfer is not None and not pending.transfer.done():
                pending.transfer.set_result(("failed", None, "the call ended"))
        log.info("call %s: %s%s", ev.call_id, ev.kind, f" ({ev.status} {ev.reason})" if ev.status else "")

    def _session_update(self, ev: SessionUpdate, now: float) -> None:
        answer = self.table.outbound_update(ev.call_id, ev.offer, ev.session_expires, now, ev.method)
        if isinstance(answer, int):
            self.calls.answer_update(ev.call_id, None, now, answer)
        else:
            self.calls.answer_update(ev.call_id, answer, now)
        log.info("call %s: %s answered %s", ev.call_id, f"re-{ev.method}" if ev.method == "INVITE" else ev.method,
                 answer if isinstance(answer, int) else 200)

    def _transfer_event(self, ev: TransferEvent) -> None:
        log.info("call %s: transfer %s%s", ev.call_id, ev.kind, f" ({ev.status} {ev.reason})" if ev.status else "")
        pending = self._pending.get(ev.call_id)
        if ev.kind in ("succeeded", "failed") and pending is not None and pending.transfer is not None \
                and not pending.transfer.done():
            pending.transfer.set_result((ev.kind, ev.status, ev.reason))

    def _request(self, data: bytes, uri: str) -> None:
        call_id = _call_id(data)
        host, port, _ = hop_address(uri)
        transport = _transport(data)  # the call's (our Via says it), whatever the hop's URI says
        ip = host if is_ip(host) else self._resolved.get(host)
        if ip is None:
            self._spawn(self._resolve_then_send(data, host, port, transport, call_id))
            return
        self._deliver(data, (ip, port), transport, call_id)

    def _deliver(self, data: bytes, addr: Address, transport: str, call_id: str) -> None:
        if self._send(data, addr, transport):
            return
        if transport == "TCP":
            self._spawn(self._connect_then_send(data, addr, call_id))
            return
        self._failed(call_id)

    async def _resolve_then_send(self, data: bytes, host: str, port: int, transport: str, call_id: str) -> None:
        try:
            infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            log.info("call %s: cannot resolve %s: %s", call_id, host, exc)
            self._failed(call_id)
            return
        self._resolved[host] = infos[0][4][0]
        self._deliver(data, (self._resolved[host], port), transport, call_id)
        self._pump()

    async def _connect_then_send(self, data: bytes, addr: Address, call_id: str) -> None:
        try:
            await self._connect(addr)
        except OSError as exc:
            log.info("call %s: TCP connection to %s:%d failed: %s", call_id, *addr, exc)
            self._failed(call_id)
            return
        if not self._send(data, addr, "TCP"):
            self._failed(call_id)
        self._pump()

    def _failed(self, call_id: str) -> None:
        """The request could not be sent: for an INVITE, the call is ``unreachable``."""
        self.calls.transport_error(call_id, self._loop.time())

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _call_id(data: bytes) -> str:
    match = _CALL_ID.search(data)
    return match.group(1).decode("utf-8", "replace") if match else ""


def _transport(data: bytes) -> str:
    match = _VIA.search(data)
    return match.group(1).decode().upper() if match else "UDP"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _hop(uri: str, transport: str) -> Address:
    host, port, _ = hop_address(uri)
    return host, port
