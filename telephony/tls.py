"""SIP over TLS (RFC 3261 §26, RFC 5630): a listener whose connections work like TCP ones.

Python's ssl under asyncio: certificate and key from the config, TLS 1.2 at least, and
optionally a client certificate verified against a CA file. A connection is framed and
served exactly like a TCP one (Content-Length framing, per-source cap, idle timeout);
responses and our BYE go back on the connection the call came in on. A failed handshake
(a wrong certificate, a port scanner) only closes that connection.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Callable

from .transports import Address, TcpConnections

HANDSHAKE_TIMEOUT_S = 10.0  # a peer that opens a connection and never finishes the handshake


@dataclass
class TlsSettings:
    host: str
    port: int
    cert_file: str
    key_file: str
    ca_file: str | None = None  # CAs that client certificates must chain to
    verify_client: bool = False  # True: a client without a certificate signed by ca_file is refused


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """The listener's context; raises OSError/ssl.SSLError naming a bad certificate or key file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.cert_file, settings.key_file)
    if settings.ca_file:
        ctx.load_verify_locations(settings.ca_file)
    if settings.verify_client:
        if not settings.ca_file:
            raise ValueError("tls.verify_client needs tls.ca_file")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def start_listener(connections: TcpConnections, settings: TlsSettings, loop: asyncio.AbstractEventLoop,
                         idle_timeout: float, now: Callable[[], float], in_use: Callable[[], set[Address]]) -> int:
    """Listen for TLS; its connections join the TCP ones (transport label "TLS"). Returns the port."""
    try:
        ctx = server_context(settings)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: a bad PEM, a key that does not match
        files = ", ".join(f for f in (settings.cert_file, settings.key_file, settings.ca_file) if f)
        raise OSError(0, f"sip.tls: cannot use {files}: {getattr(exc, 'strerror', None) or exc}") from None
    return await connections.listen(loop, settings.host, settings.port, idle_timeout, now, in_use, label="TLS",
                                    ssl_context=ctx, handshake_timeout=HANDSHAKE_TIMEOUT_S)
