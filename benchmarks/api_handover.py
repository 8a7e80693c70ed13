"""The HTTP API's loop work per request up to the engine hand-over, and per first chunk written, without
sockets or engine.

    python benchmarks/api_handover.py [--requests 2000]

N requests made at once wait for each other's parsing and validation on the one event loop
before the engine gets them (api_load's "API overhead" under a burst grows by this per request).
This feeds N POST /v1/audio/speech requests' bytes into uvicorn's HTTP protocol (the one the
server runs: httptools, else h11) over a stand-in transport, with the real FastAPI app and
calls-first gate over an engine that never answers, runs the loop until every request has been
handed to the engine, and reports the loop's CPU per request (process CPU time; one thread). Then
every stream's first chunk (0.4 s, as Chatterbox's first window) is released at once, as a batched
engine's step finishes them together, and the loop's CPU per first chunk until all are written
(the N-th of a batch is written after the N-1 before it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class _Transport(asyncio.Transport):
    """What uvicorn's protocol writes to: kept, not sent."""

    def __init__(self) -> None:
        super().__init__()
        self.out = 0
        self.writes = 0
        self.first = False
        self.on_first = lambda: None

    def get_extra_info(self, name, default=None):  # noqa: ANN001
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def write(self, data) -> None:  # noqa: ANN001
        self.out += len(data)
        self.writes += 1
        if self.out > 4096 and not self.first:  # the response's head and its first audio (0.4 s) are out
            self.first = True
            self.on_first()

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _bare(engine):
    """An ASGI app that hands over at once: uvicorn's own share."""

    async def app(scope, receive, send):  # noqa: ANN001
        await receive()
        async for _ in engine.stream("", None):
            pass

    return app


class _Silent:
    """An engine whose utterances never produce audio: the request stops at the hand-over."""

    name = "silent"
    sample_rate = 24000

    def __init__(self) -> None:
        self.handed = 0
        self.all_in = asyncio.Event()
        self.expect = 0
        self.go = asyncio.Event()
        self.first = (0.1 * np.sin(np.arange(9600) * 0.05)).astype(np.float32)
        self.first_s16 = (self.first * 32767).astype("<i2").tobytes()

    async def stream(self, text, voice, background=False):  # noqa: ANN001
        self.handed += 1
        if self.handed >= self.expect:
            self.all_in.set()
        await self.go.wait()
        yield self.first
        await asyncio.Event().wait()

    async def stream_s16(self, text, voice, background=False):  # noqa: ANN001
        """As an engine in its own process gives pcm/wav at its rate: 16-bit bytes made there."""
        async for chunk in self.stream(text, voice):
            yield self.first_s16


async def _run(n: int, bare: bool = False, plain: bool = False) -> tuple[float, float]:
    import uvicorn
    from prometheus_client import CollectorRegistry

    from config.schema import ApiSettings
    from engine.base import VoiceSpec
    from sip_tts.api import server as api_server
    from sip_tts.api.app import create_app
    from sip_tts.api.context import ApiContext, ApiMetrics, Voices
    from sip_tts.api.front import SynthesisFront
    from sip_tts.api.priority import CallsFirst

    engine = _Silent()
    gate = CallsFirst(engine, n + 1)
    voices = Voices(VoiceSpec(), {}, Path("/nonexistent"), engine.name)
    ctx = ApiContext(ApiSettings(max_concurrent=n + 1), gate, voices, lambda: (200, "ready"), lambda: b"",
                     ApiMetrics(CollectorRegistry()), speed_native=False)
    app = (create_app(ctx) if plain else SynthesisFront(create_app(ctx), ctx)) if not bare else _bare(engine)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", loop="asyncio",
                            http=api_server.HTTP_IMPL)
    config.load()
    state = uvicorn.server.ServerState()
    body = json.dumps({"model": "tts-1", "voice": "alloy", "response_format": "pcm",
                       "input": "Thank you for calling. Your appointment is confirmed for Tuesday."}).encode()
    request = (b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)) + body
    engine.expect = n
    protocols = []
    written = asyncio.Event()
    count = 0

    def one_written() -> None:
        nonlocal count
        count += 1
        if count == n:
            written.set()

    t0 = time.process_time()
    for _ in range(n):  # as uvicorn gets them: a connection each, its bytes, then the loop runs the handlers
        proto = config.http_protocol_class(config=config, server_state=state, app_state={})
        transport = _Transport()
        transport.on_first = one_written
        proto.connection_made(transport)
        proto.data_received(request)
        protocols.append(proto)
    await engine.all_in.wait()
    handover = time.process_time() - t0
    t1 = time.process_time()
    engine.go.set()
    if not bare:
        await written.wait()
    first = time.process_time() - t1
    for proto in protocols:
        proto.connection_lost(None)
    return handover / n, first / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bare", action="store_true", help="a bare ASGI app: uvicorn's part alone")
    ap.add_argument("--fastapi", action="store_true", help="the FastAPI app alone, without the synthesis front")
    ap.add_argument("--out", help="append the result (JSON, one line) to this file")
    a = ap.parse_args()
    import gc
    import logging

    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)  # the never-answered requests, cancelled at exit

    runs = []
    gc.set_threshold(50_000, 20, 100)  # as the server sets it (sip_tts/app.py _quiet_gc)
    for _ in range(a.rounds):
        gc.collect()
        gc.freeze()
        runs.append(asyncio.run(_run(a.requests, a.bare, a.fastapi)))
    hand = sorted(r[0] * 1e6 for r in runs)
    first = sorted(r[1] * 1e6 for r in runs)
    row = {"requests": a.requests, "app": "bare ASGI" if a.bare else "FastAPI alone" if a.fastapi else "server's",
           "handover_us_per_request": {"min": round(hand[0], 1), "median": round(hand[len(hand) // 2], 1)},
           "first_chunk_us_per_stream": {"min": round(first[0], 1), "median": round(first[len(first) // 2], 1)}}
    print(json.dumps(row))
    if a.out:  # appended: one line per run (the configurations side by side)
        import platform
        import subprocess

        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        row.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), commit=commit,
                   host=f"{platform.node()} ({os.cpu_count()} CPUs)", command=" ".join(["python", *sys.argv]))
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
