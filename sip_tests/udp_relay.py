"""A lossy UDP relay between one SIP client and the server, for fault tests (loopback only)."""

from __future__ import annotations

import random
import socket
import threading


class LossyRelay:
    """Listens on 127.0.0.1:port; forwards client → server and server → client, dropping ``loss`` of each way."""

    def __init__(self, server: tuple[str, int], loss: float, seed: int = 1) -> None:
        self.server = server
        self.loss = loss
        self.rng = random.Random(seed)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.client: tuple[str, int] | None = None
        self.forwarded = 0
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            if addr == self.server:
                dest = self.client
            else:
                self.client = addr
                dest = self.server
            if dest is None:
                continue
            if self.rng.random() < self.loss:
                self.dropped += 1
                continue
            self.forwarded += 1
            try:
                self.sock.sendto(data, dest)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
