"""The HTTP side of webhook routes: one async client, bounded, with strict deadlines.

``ask`` POSTs a new call's details to its route's application and returns the reply's bytes or
why there are none; ``status`` queues a call status callback and returns at once (a few worker
tasks send them). Nothing here waits on the event loop's thread: httpx's async client, a
semaphore for the requests in flight (``limits.webhooks_in_flight``; waiting for a slot counts
against the request's timeout), a bounded queue for status callbacks (``limits.status_callbacks_
queued``; full: dropped and counted). Redirects are not followed and proxy variables of the
environment are ignored: the application is the URL in prompts.yaml and nothing else.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import importlib
import json
import logging
import time
from typing import TYPE_CHECKING

import httpx

from telephony import PRODUCT

from .reply import MAX_BYTES
from .signing import HEADER, sign

if TYPE_CHECKING:
    from config.schema import Route
    from telephony.call import CallInfo

    from ..script import Speech
    from .source import WebhookRun

log = logging.getLogger("sip_tts.webhooks")
STATUS_WORKERS = 4
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
# What the first request would import on the event loop (25 ms measured), and the connect step's client
WARM_IMPORTS = ("anyio._backends._asyncio", "anyio.streams.tls", "anyio.streams.stapled", "websockets.asyncio.client")
STATUS_TIMEOUT_S = 5.0
PRIVATE_HEADERS = {"authorization", "proxy-authorization"}  # never sent to an application


def call_details(info: "CallInfo") -> dict[str, object]:
    """What an application learns of a call (the webhook body, and every status callback)."""
    return {"call_id": info.call_id, "from": info.caller, "to": info.dialed}


class Webhooks:
    """The server's one webhook client: requests, status callbacks and their counters."""

    def __init__(self, in_flight: int = 64, status_queued: int = 1000) -> None:
        self._slots = asyncio.Semaphore(in_flight)
        self._pool = in_flight + STATUS_WORKERS
        self._client: httpx.AsyncClient | None = None
        self._status_max = status_queued
        self._queue: asyncio.Queue[tuple[str, str, dict]] | None = None
        self._workers: list[asyncio.Task] = []
        self.in_flight = 0
        self.requests: collections.Counter[str] = collections.Counter()  # outcome -> count
        self.callbacks: collections.Counter[str] = collections.Counter()  # sent, failed, dropped
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)  # requests per bucket (the last: above them all)
        self.latency_sum = 0.0

    async def start(self) -> None:
        """Build the client and import what a first request needs in a thread, and start the status
        senders: on the loop, the client's TLS context took 48 ms and the first request's imports
        25 ms, a late packet for every call in progress."""
        def warm() -> httpx.AsyncClient:
            for name in WARM_IMPORTS:
                importlib.import_module(name)
            return self._new_client()

        self._client = await asyncio.to_thread(warm)
        self._start_status()

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(limits=httpx.Limits(max_connections=self._pool, max_keepalive_connections=16),
                                 timeout=httpx.Timeout(10.0), follow_redirects=False, trust_env=False,
                                 headers={"User-Agent": PRODUCT})

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:  # (not started: a test or a tool)
            self._client = self._new_client()
        return self._client

    def source(self, speech: "Speech", route: "Route", info: "CallInfo") -> "WebhookRun":
        """A new call on a webhook route: its audio source (it asks the application)."""
        from .source import WebhookRun

        return WebhookRun(speech, route, info, self)

    @staticmethod
    def _body(payload: dict, secret: str) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return body, {"Content-Type": "application/json", HEADER: sign(secret, body, time.time())}

    async def ask(self, url: str, secret: str, timeout: float, payload: dict) -> tuple[bytes | None, str]:
        """POST ``payload``; (the reply's body, "") or (None, why not). Never raises, never takes
        longer than ``timeout`` (a slot, connecting, sending and reading included). Failures are
        counted here by kind; the caller counts a body as ``answered`` or ``invalid``."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                async with self._slots:
                    self.in_flight += 1
                    try:
                        kind, why, body = await self._post(url, *self._body(payload, secret))
                    finally:
                        self.in_flight -= 1
        except asyncio.CancelledError:  # the caller hung up while the application was thinking
            self.requests["abandoned"] += 1
            raise
        except TimeoutError:
            kind, why, body = "timeout", f"timeout after {timeout:g} s", None
        except httpx.TransportError as exc:  # refused, reset, DNS, TLS: the application cannot be reached
            kind, why, body = "unreachable", f"unreachable ({type(exc).__name__})", None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            kind, why, body = "http_error", f"http error ({type(exc).__name__})", None
        if body is None:
            self.requests[kind] += 1
        seconds = time.perf_counter() - started
        self.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        return body, why

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[str, str, bytes | None]:
        async with self.client.stream("POST", url, content=body, headers=headers) as resp:
            if not 200 <= resp.status_code < 300:
                return "http_error", f"HTTP {resp.status_code}", None
            data = bytearray()
            async for chunk in resp.aiter_bytes():
                data += chunk
                if len(data) > MAX_BYTES:
                    return "invalid", f"reply too large (> {MAX_BYTES} bytes)", None
            return "", "", bytes(data)

    # -- status callbacks -------------------------------------------------------------------
    def status(self, url: str, secret: str, payload: dict) -> None:
        """Queue a status callback; returns at once (full queue: dropped and counted)."""
        self._start_status()
        assert self._queue is not None
        try:
            self._queue.put_nowait((url, secret, payload))
        except asyncio.QueueFull:
            self.callbacks["dropped"] += 1

    def _start_status(self) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue(self._status_max)
            self._workers = [asyncio.ensure_future(self._send_status()) for _ in range(STATUS_WORKERS)]

    @property
    def status_queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def _send_status(self) -> None:
        assert self._queue is not None
        while True:
            url, secret, payload = await self._queue.get()
            body, headers = self._body(payload, secret)
            try:
                async with asyncio.timeout(STATUS_TIMEOUT_S):
                    resp = await self.client.post(url, content=body, headers=headers)
                ok = 200 <= resp.status_code < 300
                why = "" if ok else f"HTTP {resp.status_code}"
            except TimeoutError:
                ok, why = False, f"timeout after {STATUS_TIMEOUT_S:g} s"
            except Exception as exc:  # (httpx's errors, a URL it cannot use): the sender itself goes on
                ok, why = False, type(exc).__name__
            finally:
                self._queue.task_done()
            self.callbacks["sent" if ok else "failed"] += 1
            if not ok:
                log.warning("call %s: status callback %s failed: %s", payload.get("call_id"), payload.get("event"), why)

    async def close(self, flush_s: float = 1.0) -> None:
        """Give queued status callbacks ``flush_s`` to go out, then stop."""
        if self._queue is not None:
            try:
                await asyncio.wait_for(self._queue.join(), flush_s)
            except TimeoutError:
                pass
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
