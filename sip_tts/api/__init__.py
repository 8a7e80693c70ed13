"""Speech over HTTP: FastAPI under uvicorn in the server's process, sharing its one engine.

``calls_first(engine, cfg)`` wraps the engine before anything uses it (API utterances
wait for free engine slots; calls never wait for the API); ``start_http(...)``
serves the API on ``api.listen`` (and ``/metrics`` + ``/health`` alone on
``metrics.listen`` when that is set); ``serve_alone(...)`` is ``sip.enabled: false``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from pathlib import Path
from typing import Callable

from config.schema import ChatterboxSettings, PromptsConfig, ServerConfig
from engine.base import TtsEngine, VoiceSpec

from .priority import CallsFirst

log = logging.getLogger("sip_tts.api")
ESPEAK_PIECE_CHARS = 300  # ~20 s of speech, ~0.1 s of espeak's worker on the development host


def calls_first(engine: TtsEngine, cfg: ServerConfig) -> CallsFirst:
    if isinstance(cfg.engine, ChatterboxSettings):
        return CallsFirst(engine, cfg.engine.max_streams)
    # espeak: one worker, one utterance at a time: long API texts go in pieces, callers in between
    return CallsFirst(engine, 1, split_chars=ESPEAK_PIECE_CHARS)


def _voice_dir(cfg: ServerConfig) -> Path:
    base = cfg.source.parent if cfg.source is not None else Path.cwd()
    chosen = cfg.api.voice_dir or (cfg.engine.voice_cache_dir if isinstance(cfg.engine, ChatterboxSettings) else None)
    path = Path(chosen) if chosen else Path("voices")
    path = path if path.is_absolute() else base / path
    return path / "uploaded" if not cfg.api.voice_dir and chosen else path


class HttpHandle:
    """The running HTTP servers: the API (``port``) and, if configured, the metrics-only one."""

    def __init__(self, servers: list, port: int | None) -> None:
        self.servers = servers
        self.port = port

    async def stop(self) -> None:
        for s in self.servers:
            await s.stop()


async def start_http(cfg: ServerConfig, prompts: PromptsConfig, engine: CallsFirst, default_voice: VoiceSpec,
                     health: Callable[[], tuple[int, str]], registry, render_metrics: Callable[[], bytes],
                     live_calls: Callable[[], int] = lambda: 0, live=None, outbound=None) -> HttpHandle:
    """Bind and serve; an address in use raises OSError (the caller stops start-up with it)."""
    from sip_tts.script import voice_spec

    from .app import create_app, create_ops_app
    from .context import ApiContext, ApiMetrics, Voices
    from .front import SynthesisFront
    from .server import HttpServer, bind

    servers: list = []
    port = None
    try:
        if cfg.api.enabled:
            engine.pace_with_calls = cfg.api.pace_with_calls
            engine.live_calls = live_calls
            configured = {n: voice_spec(n, v, default_voice, engine.name, prompts) for n, v in prompts.voices.items()}
            voices = Voices(default_voice, configured, _voice_dir(cfg), engine.name)
            voices.load()
            ctx = ApiContext(cfg.api, engine, voices, health, render_metrics, ApiMetrics(registry),
                             speed_native=engine.name == "espeak",
                             engine_loop=asyncio.get_running_loop() if cfg.api.own_thread else None,
                             live=None if cfg.api.own_thread else live,  # live calls: on the calls' loop only
                             outbound=outbound)
            front = SynthesisFront(create_app(ctx), ctx)  # the synthesis POSTs' short way, FastAPI behind it
            api = HttpServer(front, bind(cfg.api.listen), cfg.api.own_thread)
            await api.start()
            servers.append(api)
            port = api.port
            log.info("http api on %s (port %d)%s", cfg.api.listen, api.port, ", own thread" if cfg.api.own_thread else "")
        if cfg.metrics is not None:
            ops = HttpServer(create_ops_app(health, render_metrics), bind(cfg.metrics.listen))
            await ops.start()
            servers.append(ops)
            log.info("metrics and health on http://%s/", cfg.metrics.listen)
    except BaseException:
        for s in servers:
            await s.stop()
        raise
    gc.collect()
    gc.freeze()  # FastAPI's and the app's objects live as long as the process: out of the collector's scans
    return HttpHandle(servers, port)


async def serve_alone(cfg: ServerConfig, prompts: PromptsConfig, engine: CallsFirst, default_voice: VoiceSpec) -> int:
    """``sip.enabled: false``: the HTTP API alone, until SIGTERM/SIGINT."""
    from sip_tts.metrics import Metrics

    metrics = Metrics(lambda: 0, getattr(engine, "queue_depth", None),
                      engine_stats=lambda: getattr(engine, "stats", None),
                      engine_health=lambda: (bool(getattr(engine, "available", True)), getattr(engine, "restarts", 0)))
    stopping = asyncio.Event()

    def health() -> tuple[int, str]:
        if stopping.is_set():
            return 503, "draining"
        return (200, "ready") if getattr(engine, "available", True) else (503, "engine down")

    try:
        handle = await start_http(cfg, prompts, engine, default_voice, health, metrics.registry, metrics.render)
    except OSError as exc:
        log.error("cannot serve http on %s: %s", cfg.api.listen, exc.strerror or exc)
        await engine.close()
        return 1
    print(f"sip-tts ready: http api only on port {handle.port}, engine {engine.name}", flush=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await handle.stop()
    await engine.close()
    return 0
