"""A response's head and its first body bytes in one socket write.

uvicorn writes the status line and headers as soon as ``http.response.start`` is
sent, then each body message on its own: two ``send`` syscalls (and, with
TCP_NODELAY, two TCP segments) before a client has its first audio. With N
streams whose first audio comes in one GPU batch the loop makes them one after
another, so each request's second syscall is on every later request's path.
``Gather`` stands in for the connection's transport from the head to the first
body bytes and hands both to the transport as one write. If the first bytes are
not there at once (the response awaits its first chunk) the head goes out alone
at the next loop iteration, as it would have.

It needs uvicorn's ``send`` (a bound method of its request cycle, which writes
through ``cycle.transport``); given any other ``send`` (the FastAPI app's
middleware, a test's) it does nothing and the writes are as before.
"""

from __future__ import annotations

import asyncio


class Gather:
    """Collects the writes of one request cycle until ``flush`` (called once its first body bytes are sent)."""

    def __init__(self, cycle, transport) -> None:
        self._cycle = cycle
        self._transport = transport
        self._parts: list[bytes] = []
        cycle.transport = self
        asyncio.get_running_loop().call_soon(self.flush)  # nothing to join it with this iteration: the head alone

    @classmethod
    def around(cls, send) -> Gather | None:
        """A ``Gather`` on uvicorn's cycle behind ``send``, or None (another ``send``: nothing to do)."""
        cycle = getattr(send, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if transport is None or not callable(getattr(transport, "write", None)) or isinstance(transport, Gather):
            return None
        return cls(cycle, transport)

    def write(self, data: bytes) -> None:
        self._parts.append(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default=None):  # type: ignore[no-untyped-def]
        return self._transport.get_extra_info(name, default)

    def flush(self) -> None:
        """The collected bytes to the transport in one write, and the cycle writes there itself again."""
        if self._cycle is None:
            return
        self._cycle.transport = self._transport
        self._cycle = None
        if self._parts:
            data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            self._parts = []
            self._transport.write(data)
