"""A second-level cache a fleet shares through Redis: rendered prompts and voice conditioning.

Local memory and disk stay the first level; this one lets an instance that starts
later play a prompt another instance rendered, or use a voice another computed.
Redis is an optimisation, never a dependency, so nothing a call does waits on it
for more than ``timeout_ms``:

* a lookup for a call is non-blocking I/O on the event loop, awaited for at most
  ``timeout_ms``; writes run on this cache's own thread, queued and dropped when the
  queue is full (a call never waits for one);
* an error or a timeout opens a circuit breaker: nothing is sent and lookups answer
  "miss" at once, while a prober thread PINGs after ``cooldown`` seconds (doubling
  up to a minute) and closes it at the first answer, with no traffic needed.
  Opening and closing are logged once each; errors are counted for the metrics;
* Redis refusing writes (full with ``noeviction``) is counted and logged once; reads
  go on;
* every entry carries a magic, a format version and a checksum of its payload:
  a corrupted entry, or one written by another format, is ignored (and counted),
  never played.

Keys are ``{prefix}:v{FORMAT}:{kind}:{sha256(namespace, key)}``: the namespace holds
the engine version, so an upgrade never reads audio rendered by the old one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("sip_tts.shared_cache")

FORMAT = 1
MAGIC = b"STTS"
_HEADER = struct.Struct("!4sHI8s")  # magic, format version, payload length, sha256(payload)[:8]
_MAX_COOLDOWN = 60.0


def pack(payload: bytes, version: int = FORMAT) -> bytes:
    """An entry as stored: header (magic, version, length, digest) + payload."""
    return _HEADER.pack(MAGIC, version, len(payload), hashlib.sha256(payload).digest()[:8]) + payload


def unpack(blob: bytes) -> bytes | None:
    """The payload of a well-formed entry of this format; None for anything else."""
    if len(blob) < _HEADER.size:
        return None
    magic, version, length, digest = _HEADER.unpack_from(blob)
    payload = blob[_HEADER.size:]
    if magic != MAGIC or version != FORMAT or length != len(payload):
        return None
    return payload if hashlib.sha256(payload).digest()[:8] == digest else None


def checkpoint_fingerprint(model_dir: str | Path) -> str:
    """A cheap identity of a checkpoint directory: each file's name, size and the SHA-256 of its
    first and last MiB (hashing gigabytes at every start-up would cost seconds)."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).iterdir() if p.is_file()):
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\0".encode())
        with path.open("rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), 2)
                h.update(f.read())
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class SharedCacheConfig:
    """What it takes to build a SharedCache (picklable: an engine process builds its own)."""

    url: str
    namespace: str = ""           # engine version (and checkpoint, for voices): part of every key
    timeout_ms: float = 20        # one Redis command; a lookup waits no longer than this
    cooldown_s: float = 2         # circuit open this long after an error (doubling, at most a minute)
    ttl_s: int = 0                # entries expire after this long; 0: never (let maxmemory-policy evict)
    prefix: str = "sip-tts"
    write_queue: int = 256        # writes waiting; more are dropped (counted)


class SharedCache:
    """Redis as a second-level cache: bounded waits, a circuit breaker, counters.

    ``get``/``put`` are for the event loop (``get`` waits at most ``timeout_ms``,
    ``put`` never waits); ``get_blocking``/``put_blocking`` are for worker threads.
    """

    def __init__(self, config: SharedCacheConfig) -> None:
        import redis  # optional dependency: only a configured cache needs it
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.config = config
        timeout = config.timeout_ms / 1000
        self._redis = redis.Redis.from_url(config.url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                           health_check_interval=0, retry=Retry(NoBackoff(), 0))
        self._errors_cls: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._refused_cls: type[BaseException] = redis.ResponseError  # e.g. OOM: Redis is full
        self._full = False
        self._aredis: object | None = None  # the event loop's client (non-blocking sockets), made on first use
        self._writes: queue.Queue[tuple[str, bytes] | None] = queue.Queue(config.write_queue)
        self._lock = threading.Lock()
        self._open_until = 0.0        # while down: when the next probe is due
        self._down = False
        self._cooldown = config.cooldown_s
        self._probing = False
        self._reads_in_flight = 0
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.rejected = 0             # entries ignored: corrupted or another format
        self.dropped = 0              # writes dropped: queue full or circuit open
        self.writes = 0
        self._writer = threading.Thread(target=self._write_loop, name="shared-cache-put", daemon=True)
        self._writer.start()

    # -- keys --------------------------------------------------------------------------
    def key(self, kind: str, key: str) -> str:
        digest = hashlib.sha256(f"{self.config.namespace}\0{key}".encode()).hexdigest()
        return f"{self.config.prefix}:v{FORMAT}:{kind}:{digest}"

    @property
    def up(self) -> bool:
        """False while the circuit is open (Redis failed and has not answered since)."""
        return not self._down

    # -- for the event loop ------------------------------------------------------------
    async def get(self, kind: str, key: str, timeout_ms: float | None = None) -> bytes | None:
        """The payload stored under (kind, key), or None: a miss, Redis down or slower than ``timeout_ms``
        (default: the configured one; background work, which no caller hears, may wait longer).

        Non-blocking I/O on the loop (a thread hand-off cost several ms at p95 on a loaded host):
        the loop only sends the GET and takes the reply when it arrives; this call waits at most
        ``timeout_ms``."""
        if not self._allowed() or self._reads_in_flight >= 8:
            return None
        if self._aredis is None:
            import redis.asyncio as aredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # wait_for bounds each lookup; the sockets' own limit only has to cover the longest (background)
            longest = self.config.timeout_ms * 10 / 1000
            self._aredis = aredis.Redis.from_url(self.config.url, socket_timeout=longest,
                                                 socket_connect_timeout=longest, health_check_interval=0,
                                                 retry=Retry(NoBackoff(), 0))
        self._reads_in_flight += 1
        try:
            blob = await asyncio.wait_for(self._aredis.get(self.key(kind, key)),  # type: ignore[attr-defined]
                                          (timeout_ms or self.config.timeout_ms) / 1000)
        except asyncio.TimeoutError:
            self._failed(f"no answer within {timeout_ms or self.config.timeout_ms:g} ms")
            return None
        except self._errors_cls as exc:
            self._failed(exc)
            return None
        finally:
            self._reads_in_flight -= 1
        self._succeeded()
        return self._accept(blob)

    def put(self, kind: str, key: str, payload: bytes) -> None:
        """Store in the background; never waits (dropped when Redis is down or the queue is full)."""
        if not self._allowed():
            self.dropped += 1
            return
        try:
            self._writes.put_nowait((self.key(kind, key), pack(payload)))
        except queue.Full:
            self.dropped += 1

    # -- for worker threads ------------------------------------------------------------
    def get_blocking(self, kind: str, key: str) -> bytes | None:
        if not self._allowed():
            self.misses += 1
            return None
        return self._read(self.key(kind, key))

    def put_blocking(self, kind: str, key: str, payload: bytes) -> None:
        if self._allowed():
            self._write(self.key(kind, key), pack(payload))

    def close(self) -> None:
        try:
            self._writes.put_nowait(None)
        except queue.Full:
            pass
        try:
            self._redis.close()
        except Exception:  # closing a broken connection: nothing left to do
            pass

    async def aclose(self) -> None:
        """``close``, and the event loop's connection too."""
        if self._aredis is not None:
            try:
                await self._aredis.aclose()  # type: ignore[attr-defined]
            except Exception:  # a broken connection: nothing left to do
                pass
        self.close()

    # -- internals ---------------------------------------------------------------------
    def _read(self, rkey: str) -> bytes | None:
        try:
            blob = self._redis.get(rkey)
        except self._errors_cls as exc:
            self._failed(exc)
            return None
        self._succeeded()
        return self._accept(blob)

    def _accept(self, blob: bytes | None) -> bytes | None:
        """A reply's payload, counted: a hit, a miss, or an entry rejected (corrupted, another format)."""
        if blob is None:
            self.misses += 1
            return None
        payload = unpack(blob)
        if payload is None:
            self.rejected += 1
            self.misses += 1
            return None
        self.hits += 1
        return payload

    def _write(self, rkey: str, blob: bytes) -> None:
        try:
            self._redis.set(rkey, blob, ex=self.config.ttl_s or None)
        except self._refused_cls as exc:  # full (maxmemory with noeviction), read-only replica: reads still work
            self.errors += 1
            if not self._full:
                self._full = True
                log.warning("redis %s refuses writes (%s): new entries stay local", _safe_url(self.config.url), exc)
            return
        except self._errors_cls as exc:
            self._failed(exc)
            return
        self.writes += 1
        if self._full:
            self._full = False
            log.info("redis %s takes writes again", _safe_url(self.config.url))
        self._succeeded()

    def _write_loop(self) -> None:
        while (item := self._writes.get()) is not None:
            if self._allowed():
                self._write(*item)
            else:
                self.dropped += 1

    def _allowed(self) -> bool:
        """Closed circuit: go ahead. Open: no (the prober thread closes it when Redis answers)."""
        return not self._down

    def _probe_loop(self) -> None:
        """While the circuit is open: wait the cooldown, PING; a success closes it, a failure doubles the wait."""
        while True:
            with self._lock:
                if not self._down:
                    self._probing = False
                    return
            time.sleep(max(0.0, self._open_until - time.monotonic()))
            try:
                self._redis.ping()
            except self._errors_cls:
                with self._lock:
                    self.errors += 1
                    self._cooldown = min(self._cooldown * 2, _MAX_COOLDOWN)
                    self._open_until = time.monotonic() + self._cooldown
            else:
                self._succeeded()

    def _failed(self, why: object) -> None:
        with self._lock:
            self.errors += 1
            was_down, self._down = self._down, True
            if not was_down:
                self._open_until = time.monotonic() + self._cooldown
            start_probe = not self._probing
            self._probing = True
        if start_probe:
            threading.Thread(target=self._probe_loop, name="shared-cache-probe", daemon=True).start()
        if not was_down:
            log.warning("redis %s unavailable (%s): local cache only, retrying every %g s or more",
                        _safe_url(self.config.url), why, self.config.cooldown_s)

    def _succeeded(self) -> None:
        if not self._down:
            return
        with self._lock:
            was_down, self._down, self._cooldown = self._down, False, self.config.cooldown_s
        if was_down:
            log.info("redis %s answers again: shared cache back", _safe_url(self.config.url))


def _safe_url(url: str) -> str:
    """The URL without its password (it goes into logs)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
