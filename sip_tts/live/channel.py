"""The message channel a live session runs over: the same protocol code serves a WebSocket
the application opened to us (FastAPI/Starlette, ``/v1/calls/{id}/stream``) and one we opened
to the application (the ``websockets`` client, a route's ``connect: ws://...`` step)."""

from __future__ import annotations

from typing import AsyncIterator, Protocol


class Channel(Protocol):
    """What a ``LiveSession`` needs of a connection. Sends may wait (the peer's flow control):
    the session never awaits them on the call's path, only in its writer task."""

    async def send_text(self, data: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...

    def messages(self) -> AsyncIterator[str | bytes]:
        """The peer's messages until it closes (a closed or failed connection just ends it)."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class StarletteChannel:
    """A server-side WebSocket (FastAPI), already accepted."""

    def __init__(self, ws) -> None:  # starlette.websockets.WebSocket
        self.ws = ws

    async def send_text(self, data: str) -> None:
        await self.ws.send_text(data)

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def messages(self) -> AsyncIterator[str | bytes]:
        while True:
            try:
                message = await self.ws.receive()
            except RuntimeError:  # receive after a disconnect
                return
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                yield message["text"]
            elif message.get("bytes") is not None:
                yield message["bytes"]

    async def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            await self.ws.close(code, reason)
        except RuntimeError:  # already closed
            pass


class WebsocketsChannel:
    """A connection opened with ``websockets.connect`` (the asyncio client of websockets >= 13)."""

    def __init__(self, conn) -> None:  # websockets.asyncio.client.ClientConnection
        self.conn = conn

    async def send_text(self, data: str) -> None:
        await self.conn.send(data)

    async def send_bytes(self, data: bytes) -> None:
        await self.conn.send(data)

    async def messages(self) -> AsyncIterator[str | bytes]:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in self.conn:
                yield message
        except ConnectionClosed:
            return

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.conn.close(code, reason)
