"""RTP port allocation from the configured range (even ports; the odd one is left for RTCP)."""

from __future__ import annotations

from collections import deque


class PortsExhausted(RuntimeError):
    pass


class PortAllocator:
    def __init__(self, port_min: int, port_max: int) -> None:
        first = port_min + (port_min % 2)
        self._free: deque[int] = deque(range(first, port_max, 2))
        self._used: set[int] = set()

    def acquire(self) -> int:
        """The least recently released port (so a late packet of an old call rarely hits a new one)."""
        if not self._free:
            raise PortsExhausted("no free RTP port")
        port = self._free.popleft()
        self._used.add(port)
        return port

    def skip(self, port: int) -> None:
        """A port we could not bind (taken by another process): retire it to the back of the line."""
        self.release(port)

    def release(self, port: int) -> None:
        if port in self._used:
            self._used.remove(port)
            self._free.append(port)

    @property
    def in_use(self) -> int:
        return len(self._used)

    @property
    def available(self) -> int:
        return len(self._free)
