"""asyncio protocols for SIP over UDP and TCP and for a call's RTP/RTCP sockets.

They only move bytes: a SIP message (a datagram, or one framed out of a TCP stream) goes to
the server's ``on_message(data, addr, transport)``; a call socket's datagrams go to its callback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable

from .sip.message import SipParseError, frame_length

log = logging.getLogger("telephony.server")
Address = tuple[str, int]
OnMessage = Callable[[bytes, Address, str], None]
SWEEP_INTERVAL = 5.0  # how often idle TCP connections are looked for


class SipDatagrams(asyncio.DatagramProtocol):
    def __init__(self, on_message: OnMessage) -> None:
        self.on_message = on_message

    def datagram_received(self, data: bytes, addr: Address) -> None:  # type: ignore[override]
        self.on_message(data, addr[:2], "UDP")

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket error: %s", exc)


class CallSocket(asyncio.DatagramProtocol):
    """A call's RTP or RTCP socket: what arrives goes to ``on_datagram(data, addr)``."""

    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: Address) -> None:  # type: ignore[override]
        self.on_datagram(data, addr[:2])

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while the caller is gone: nothing to do


class TcpConnection(asyncio.Protocol):
    """One SIP-over-TCP connection: messages framed by Content-Length (RFC 3261 §18.3)."""

    def __init__(self, owner: "TcpConnections") -> None:
        self.owner = owner
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)
        self.last_activity = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = tuple(transport.get_extra_info("peername")[:2])  # type: ignore[assignment]
        self.last_activity = self.owner.now()
        if not self.owner.register(self):
            transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.owner.now()
        self.buffer += data
        while self.buffer:
            try:
                n = frame_length(bytes(self.buffer))
            except SipParseError:
                self._close("unframeable data")
                return
            if n is None:
                if len(self.buffer) > self.owner.max_message_bytes:
                    self._close("message over the size limit")
                return
            message = bytes(self.buffer[:n])
            del self.buffer[:n]
            self.owner.on_message(message, self.peer, "TCP")

    def _close(self, why: str) -> None:
        log.info("closing TCP connection from %s: %s", self.peer, why)
        self.buffer.clear()
        assert self.transport is not None
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.unregister(self)


class TcpConnections:
    """The TCP listener and its connections: a per-source cap, and idle ones closed unless a call
    still needs them (for its BYE)."""

    def __init__(self, max_per_source: int, max_message_bytes: int, on_message: OnMessage) -> None:
        self.max_per_source = max_per_source
        self.max_message_bytes = max_message_bytes
        self.on_message = on_message
        self.now: Callable[[], float] = lambda: 0.0
        self._conns: dict[Address, TcpConnection] = {}
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def listen(self, loop: asyncio.AbstractEventLoop, host: str, port: int, idle_timeout: float,
                     now: Callable[[], float], in_use: Callable[[], set[Address]]) -> None:
        self.now = now
        self._server = await loop.create_server(lambda: TcpConnection(self), host, port, reuse_address=True)

        def sweep() -> None:
            t = now()
            busy = in_use()
            for peer, conn in list(self._conns.items()):
                if t - conn.last_activity > idle_timeout and peer not in busy:
                    log.info("closing idle TCP connection from %s", peer)
                    if conn.transport is not None:
                        conn.transport.close()
            self._sweeper = loop.call_later(SWEEP_INTERVAL, sweep)

        self._sweeper = loop.call_later(SWEEP_INTERVAL, sweep)

    def register(self, conn: TcpConnection) -> bool:
        same_source = sum(1 for peer in self._conns if peer[0] == conn.peer[0])
        if same_source >= self.max_per_source:
            log.warning("refused TCP connection from %s: %d already open", conn.peer[0], same_source)
            return False
        self._conns[conn.peer] = conn
        return True

    def unregister(self, conn: TcpConnection) -> None:
        if self._conns.get(conn.peer) is conn:
            del self._conns[conn.peer]

    def write(self, addr: Address, data: bytes) -> bool:
        """Send on the connection from ``addr``; False if there is none (the caller falls back to UDP)."""
        conn = self._conns.get(addr)
        if conn is None or conn.transport is None:
            return False
        conn.transport.write(data)
        return True

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
            for conn in list(self._conns.values()):
                if conn.transport is not None:
                    conn.transport.close()


def bind_udp(host: str, port: int, dscp: int) -> socket.socket | None:
    """A non-blocking UDP socket bound to ``host:port``; None if the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    if dscp:
        tos = dscp << 2  # DSCP in the upper six bits of TOS / traffic class
        try:
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
        except OSError:
            pass
    return sock
