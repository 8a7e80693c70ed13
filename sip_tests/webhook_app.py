"""A small real HTTP application for the webhook tests: a ThreadingHTTPServer on loopback that
answers each path as the test says, verifies every request's signature the way README's
"Webhook routes" tells an application to, and records what it got."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Received:
    path: str
    body: dict
    signed: bool  # the X-Sip-Tts-Signature header verified with the shared secret
    at: float


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    delay_s: float = 0.0
    make: Callable[[dict], bytes] | None = None  # the body from the request's (instead of ``body``)


def signature_ok(secret: str, body: bytes, header: str, now: float) -> bool:
    """README's verification ("Webhook routes"), as an application writes it: HMAC-SHA256 over
    "<t>." + the raw body, compared in constant time, t within 5 minutes."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    if not fields.get("t", "").isdigit() or abs(now - int(fields["t"])) > 300:
        return False
    mac = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, fields.get("v1", ""))


@dataclass
class Application:
    secret: str
    answers: dict[str, Answer] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "Application":
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                app.received.append(Received(self.path, json.loads(body), signature_ok(
                    app.secret, body, self.headers.get("X-Sip-Tts-Signature", ""), time.time()), time.time()))
                answer = app.answers.get(self.path, Answer(204))
                time.sleep(answer.delay_s)
                reply = answer.make(app.received[-1].body) if answer.make is not None else answer.body
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:  # the server gave up waiting (a timeout test)
                    pass

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def events(self, path: str) -> list[dict]:
        return [r.body for r in self.received if r.path == path]

    def wait_for(self, path: str, n: int, timeout: float = 10) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.events(path)) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.events(path)


class Agent:
    """A voice agent as a `websockets` server on loopback (its own event loop in a thread): on each
    connection from the server it reads the start event, pushes ``text`` with a flush, and closes
    when the server reports the speech played out (``idle``)."""

    def __init__(self, text: str) -> None:
        import asyncio

        self.text = text
        self.handshakes: list[dict[str, str]] = []
        self.events: list[dict] = []
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop = None
        self.port = 0

    async def _handle(self, ws) -> None:
        self.handshakes.append({k.lower(): v for k, v in ws.request.headers.raw_items()})
        self.events.append(json.loads(await ws.recv()))
        await ws.send(json.dumps({"text": self.text, "flush": True}))
        async for message in ws:
            self.events.append(json.loads(message))
            if self.events[-1].get("event") == "idle":
                break

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self._stop = self.loop.create_future()
        async with serve(self._handle, "127.0.0.1", 0) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    def start(self) -> "Agent":
        threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True).start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set_result, None)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/agent"
