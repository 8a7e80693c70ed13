"""uvicorn inside ``sip-tts serve``: on the server's event loop (default) or on a thread of its own.

We bind the sockets ourselves (an address in use is our clear start-up error, not
uvicorn's ``sys.exit``), keep our signal handlers (SIGTERM drains the calls), keep
our logging, and log no line per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import socket
import threading

import uvicorn

from config.schema import parse_hostport

from .ws_protocol import BoundedWebSocketProtocol

log = logging.getLogger("sip_tts.api")
# httptools (C) parses and writes HTTP/1.1 for uvicorn in a fraction of h11's (pure Python) time: N requests
# made at once wait for each other's parsing on the one loop (benchmarks/results/api_overhead.md)
HTTP_IMPL = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # the application owns SIGINT/SIGTERM (drain first)
        yield


def bind(listen: str) -> socket.socket:
    host, port = parse_hostport(listen, 8080)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, reuse_port=False, backlog=1024)
    sock.setblocking(False)
    return sock


class HttpServer:
    """One uvicorn server on a bound socket; ``own_thread``: its own loop on its own thread."""

    def __init__(self, app, sock: socket.socket, own_thread: bool = False) -> None:
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.own_thread = own_thread
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", loop="asyncio",
                                http=HTTP_IMPL, ws=BoundedWebSocketProtocol, ws_max_size=2**16,
                                ws_per_message_deflate=False, timeout_keep_alive=30, timeout_graceful_shutdown=2)
        self.server = _Server(config)
        self._task: asyncio.Future | None = None
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        if not self.own_thread:
            self.loop = asyncio.get_running_loop()
            self._task = asyncio.ensure_future(self.server.serve(sockets=[self.sock]))
        else:
            ready = threading.Event()

            def run() -> None:
                loop = asyncio.new_event_loop()
                self.loop = loop
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_until_complete(self.server.serve(sockets=[self.sock]))
                loop.close()

            self._thread = threading.Thread(target=run, name="http-api", daemon=True)
            self._thread.start()
            await asyncio.get_running_loop().run_in_executor(None, ready.wait)
        for _ in range(200):  # until uvicorn listens (or failed)
            if self.server.started or (self._task is not None and self._task.done()):
                break
            await asyncio.sleep(0.01)
        if self._task is not None and self._task.done() and self._task.exception() is not None:
            raise OSError(str(self._task.exception()))

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 5)
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5)
