"""uvicorn's WebSocket protocol with bounded send buffers (the live-call stream, /v1/calls/{id}/stream).

The kernel grows a TCP socket's send buffer up to megabytes for a peer that does not read,
which would hide a stalled application for minutes of the caller's audio. A live call's
stream holds at most ``SEND_BUFFER`` in the kernel (Linux keeps twice that for bookkeeping)
and ``TRANSPORT_HIGH`` in asyncio's buffer; past that its sends wait and the session's own
bounded outbox drops the caller's frames, counted (sip_tts/live). Only upgraded WebSocket
connections get these limits: plain HTTP responses keep the kernel's autotuning. (An
application's messages are capped at 64 KiB: ``ws_max_size`` in server.py; a text fragment is
at most 4,096 characters.)
"""

from __future__ import annotations

import socket

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

SEND_BUFFER = 32 * 1024  # ~1 s of pcm16_16k audio frames in the kernel (doubled by Linux)
TRANSPORT_HIGH = 16 * 1024


class BoundedWebSocketProtocol(WebSocketsSansIOProtocol):
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            except OSError:
                pass
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH)
