"""Any engine in its own process, behind the same ``TtsEngine`` interface.

Why: a GPU worker thread runs Python between its kernel launches (scheduling,
window bookkeeping, sampling results). In the server's process that Python
holds the GIL the event loop needs, and RTP packets go out late: measured on
an H100 with 128 live calls, 4% of packets came more than 30 ms after the one
before, none with prompts from the cache. In a child process the engine has
its own interpreter, and the server's loop only receives finished chunks.

Wire: one ``multiprocessing`` pipe. Server → engine: ``("stream", id, text,
voice, background, codec)``, ``("cancel", id)``, ``("close",)``. Engine → server:
``("ready", sample rate)`` or ``("failed", why)`` once; then ``("chunk", id, bytes)``
(float32 at the engine's rate; with a ``codec`` the line audio, 8 kHz G.711, or ``S16LE``: 16-bit at the
engine's rate, for the HTTP API's pcm and wav: half the bytes, and no conversion on the server's loop),
``("end", id)``, ``("error", id, why)`` and every half second ``("stats",
EngineStats, queue depth)``. A reader thread on each side turns messages into
event-loop callbacks; only the loop thread writes.

Line audio (``stream_line``): the child resamples and G.711-encodes, so the pipe
carries 8 KB per second of speech instead of 96 KB, and the server's loop only
queues frames. Measured on an H100 with 128 live calls (SIP_TTS_PACER_DIAG): the
last late pacing ticks came while a GPU batch's chunks arrived, the loop thread
busy 7-9 ms encoding them and the reader thread 4-5 ms receiving them.

Faults: if the engine process dies, every stream in progress fails with an
``EngineError`` (the call plays what it has and goes on) and the process is
started again after ``restart_delay`` seconds (not sooner, even when streams
are asked for: no crash loop); streams asked for meanwhile wait for it. While it
is down, ``available`` is False (the server answers new calls 503).
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import itertools
import logging
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import AsyncIterator

import numpy as np

from .audio import LINE_CODECS, encode_line, float_to_s16le
from .base import EngineBase, EngineError, EngineStats, VoiceSpec

log = logging.getLogger(__name__)
DRAIN_BATCH = 4  # engine messages handled per event-loop iteration
S16LE = "S16LE"  # stream_s16's wire codec: 16-bit little-endian at the engine's own rate
# When a stream's first chunk reached this process (perf_counter, taken by the reader thread), set in the context
# of the task reading the stream as that chunk is handed to it: the engine's own first audio, before this process's
# loop handed it on (a batch's chunks are handed on one after another; benchmarks/api_load.py reports both)
FIRST_ARRIVAL: contextvars.ContextVar[float | None] = contextvars.ContextVar("engine_first_arrival", default=None)


def _resolve(target: str) -> object:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class EngineProcess(EngineBase):
    """``target`` ("module:callable") called with ``args``/``kwargs`` in the child builds the real engine."""

    def __init__(self, name: str, sample_rate: int, target: str, args: tuple = (), kwargs: dict | None = None,
                 restart_delay: float = 1.0, start_timeout: float = 600.0) -> None:
        self.name = name
        self.sample_rate = sample_rate
        self._target = target
        self._args = (args, kwargs or {})
        self.restart_delay = restart_delay
        self.start_timeout = start_timeout
        self._conn: Connection | None = None
        self._proc: mp.process.BaseProcess | None = None
        self._streams: dict[int, asyncio.Queue] = {}
        self._ids = itertools.count(1)
        self._stats = EngineStats()
        self._depth = 0
        self._starting: asyncio.Future | None = None
        self._arrived: deque[tuple] = deque()  # (message, arrival) from the reader thread, not yet handled
        self._first_at: dict[int, float] = {}  # a stream's first chunk's arrival, until its reader has it
        self._lock = threading.Lock()
        self._draining = False
        self._down_until = 0.0  # loop time before which no new process is started
        self._closing = False
        self.restarts = 0

    # -- life cycle -----------------------------------------------------------------
    async def start(self) -> None:
        if self._conn is not None:
            return
        wait = self._down_until - asyncio.get_running_loop().time()
        if wait > 0:  # it just died: no new process before restart_delay (no crash loop)
            await asyncio.sleep(wait)
            if self._conn is not None:
                return
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._spawn())
        try:
            await asyncio.shield(self._starting)
        finally:
            if self._starting is not None and self._starting.done():
                self._starting = None

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child_main, args=(child, self._target, self._args), name=f"{self.name}-engine",
                           daemon=True)
        proc.start()
        child.close()

        def first() -> tuple:
            """The child's first word; on failure it is reaped here, off the event loop."""
            msg: tuple = ("failed", f"no answer in {self.start_timeout:.0f} s")
            if parent.poll(self.start_timeout):
                try:
                    msg = parent.recv()
                except (EOFError, OSError):
                    msg = ("failed", None)
            if msg[0] != "ready":
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
                if msg[1] is None:
                    msg = ("failed", f"engine process exited with code {proc.exitcode}")
            return msg

        msg = await loop.run_in_executor(None, first)
        if msg[0] != "ready":
            parent.close()
            self._down_until = loop.time() + self.restart_delay  # the next try waits too
            raise EngineError(f"engine {self.name}: {msg[1]}")
        self._conn, self._proc = parent, proc
        self.sample_rate = msg[1]  # the engine's own word
        threading.Thread(target=self._read, args=(parent, proc, loop), name=f"{self.name}-engine-reader",
                         daemon=True).start()

    def _read(self, conn: Connection, proc: mp.process.BaseProcess, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                proc.join(5)  # reap it here, not on the event loop, and learn why
                msg = ("died", conn, proc.exitcode)  # after every message it sent, in order
            with self._lock:
                self._arrived.append((msg, time.perf_counter()))
                wake = not self._draining
                self._draining = True
            if wake:
                loop.call_soon_threadsafe(self._drain)
            if msg[0] == "died":
                return

    def _drain(self) -> None:
        """Hand arrived messages to their streams, at most ``DRAIN_BATCH`` per loop iteration.

        A GPU batch finishes many calls' windows at once; handled in one iteration (each
        chunk wakes a call's encoder), the burst's work comes before the RTP pacer's next
        timer. Sliced, the loop runs its due timers in between. Measured on an H100 with 128
        live calls: late-packet moments 11 -> 8, so this bounds the burst but was not the
        main cause of those (benchmarks/results/engine_notes.md).
        """
        for _ in range(DRAIN_BATCH):
            with self._lock:
                if not self._arrived:
                    self._draining = False
                    return
                msg, at = self._arrived.popleft()
            self._dispatch(msg, at)
        asyncio.get_running_loop().call_soon(self._drain)

    def _dispatch(self, msg: tuple, at: float = 0.0) -> None:
        kind = msg[0]
        if kind == "died":
            self._died(msg[1], msg[2])
            return
        if kind == "stats":
            self._stats, self._depth = msg[1], msg[2]
            return
        q = self._streams.get(msg[1])
        if q is None:
            return  # cancelled meanwhile
        if kind == "chunk":
            self._first_at.setdefault(msg[1], at)
            q.put_nowait(msg[2])
        elif kind == "end":
            q.put_nowait(None)
        elif kind == "error":
            q.put_nowait(EngineError(msg[2]))

    def _died(self, conn: Connection, code: int | None) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self._proc = None
        for q in self._streams.values():
            q.put_nowait(EngineError(f"engine {self.name}: its process exited"))
        if self._closing:
            return
        log.error("engine process exited (code %s); restarting in %.1f s", code, self.restart_delay)
        self.restarts += 1
        loop = asyncio.get_running_loop()
        self._down_until = loop.time() + self.restart_delay
        loop.call_later(self.restart_delay, self._restart)

    def _restart(self) -> None:
        if self._closing or self._conn is not None or self._starting is not None:
            return

        async def again() -> None:
            try:
                await self.start()
            except EngineError as exc:
                log.error("engine restart failed: %s", exc)
                self._died_later()

        asyncio.ensure_future(again())

    def _died_later(self) -> None:
        if not self._closing:
            asyncio.get_running_loop().call_later(self.restart_delay, self._restart)

    async def close(self) -> None:
        self._closing = True
        conn, proc = self._conn, self._proc
        self._conn = self._proc = None
        if conn is not None:
            try:
                conn.send(("close",))
            except OSError:
                pass
        if proc is not None:
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 15)
            if proc.is_alive():
                proc.kill()
        if conn is not None:
            conn.close()

    @property
    def available(self) -> bool:
        """Whether the engine process is up (False while it restarts)."""
        return self._conn is not None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- the engine interface ---------------------------------------------------------
    def _send(self, msg: tuple) -> None:
        if self._conn is None:
            raise EngineError(f"engine {self.name}: its process is not running")
        try:
            self._conn.send(msg)
        except OSError as exc:
            raise EngineError(f"engine {self.name}: {exc}") from exc

    async def stream(self, text: str, voice: VoiceSpec, background: bool = False) -> AsyncIterator[np.ndarray]:
        async for data in self._request(text, voice, background, None):
            yield np.frombuffer(data, dtype=np.float32)

    async def stream_line(self, text: str, voice: VoiceSpec, codec: str,
                          background: bool = False) -> AsyncIterator[bytes]:
        """The speech as 8 kHz G.711 (``codec``: PCMU or PCMA), resampled and encoded in the child."""
        if codec not in LINE_CODECS:
            raise ValueError(f"unknown codec {codec!r}")
        async for data in self._request(text, voice, background, codec):
            yield data

    async def stream_s16(self, text: str, voice: VoiceSpec, background: bool = False) -> AsyncIterator[bytes]:
        """The speech as 16-bit little-endian at the engine's rate, converted in the child (the HTTP API's pcm/wav)."""
        async for data in self._request(text, voice, background, S16LE):
            yield data

    async def _request(self, text: str, voice: VoiceSpec, background: bool, codec: str | None) -> AsyncIterator[bytes]:
        await self.start()
        rid = next(self._ids)
        q: asyncio.Queue = asyncio.Queue()
        self._streams[rid] = q
        finished = False
        first = True
        try:
            self._send(("stream", rid, text, voice, background, codec))
            while True:
                item = await q.get()
                if item is None:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if first:
                    FIRST_ARRIVAL.set(self._first_at.get(rid))
                    first = False
                yield item
        finally:
            self._streams.pop(rid, None)
            self._first_at.pop(rid, None)
            if not finished and self._conn is not None:
                try:
                    self._send(("cancel", rid))
                except EngineError:
                    pass

    @property
    def stats(self) -> EngineStats:
        return self._stats

    def queue_depth(self) -> int:
        return self._depth


# -- the child ------------------------------------------------------------------------
def _child_main(conn: Connection, target: str, args: tuple[tuple, dict], nice: int = 5) -> None:
    logging.basicConfig(level=logging.INFO, format="engine: %(levelname)s %(name)s: %(message)s")
    try:
        os.nice(nice)  # when CPU is short, the server's RTP pacing goes first
    except OSError:
        pass
    try:
        engine = _resolve(target)(*args[0], **args[1])
    except Exception as exc:  # reported to the server, which names it
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    asyncio.run(_serve(conn, engine))


async def _serve(conn: Connection, engine) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    try:
        await engine.start()
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", engine.sample_rate))
    inbox: asyncio.Queue = asyncio.Queue()

    def read() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                msg = ("close",)  # the server is gone
            loop.call_soon_threadsafe(inbox.put_nowait, msg)
            if msg[0] == "close":
                return

    threading.Thread(target=read, name="engine-commands", daemon=True).start()
    tasks: dict[int, asyncio.Task] = {}

    async def run(rid: int, text: str, voice: VoiceSpec, background: bool, codec: str | None) -> None:
        try:
            if codec == S16LE:
                async for chunk in engine.stream(text, voice, background):
                    conn.send(("chunk", rid, float_to_s16le(np.asarray(chunk, dtype=np.float32))))
            elif codec:
                async for data in encode_line(engine.stream(text, voice, background), engine.sample_rate, codec):
                    conn.send(("chunk", rid, data))
            else:
                async for chunk in engine.stream(text, voice, background):
                    conn.send(("chunk", rid, np.ascontiguousarray(chunk, dtype=np.float32).tobytes()))
            conn.send(("end", rid))
        except asyncio.CancelledError:
            pass  # the server stopped listening
        except Exception as exc:
            conn.send(("error", rid, str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"))
        finally:
            tasks.pop(rid, None)

    async def report() -> None:
        while True:
            conn.send(("stats", engine.stats, engine.queue_depth()))
            await asyncio.sleep(0.5)

    reporter = asyncio.create_task(report())
    try:
        while True:
            msg = await inbox.get()
            if msg[0] == "stream":
                tasks[msg[1]] = asyncio.create_task(run(*msg[1:]))
            elif msg[0] == "cancel":
                task = tasks.get(msg[1])
                if task is not None:
                    task.cancel()
            elif msg[0] == "close":
                break
    finally:
        reporter.cancel()
        for task in list(tasks.values()):
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        await engine.close()
