"""The running application, assembled in one place: config -> engine -> router -> server -> metrics.

``App`` owns what ``sip-tts serve`` builds and the order it starts and stops it in: the engine
first (a server that cannot speak must not take calls), then the prompts bound to it (the
router), the SIP server, the metrics endpoint; on SIGTERM a drain, on SIGHUP a prompts reload.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from pathlib import Path

from config import ConfigError, load_prompts
from config.loader import shown_path
from config.schema import PromptsConfig, ServerConfig, parse_hostport
from engine.prompt_cache import PromptCache
from telephony.admission import AdmissionPolicy
from telephony.call import CallInfo
from telephony.calls import CallSettings
from telephony.server import ServerSettings, SipServer
from telephony.sip.registration import RegistrationConfig

from . import api, fleet, systemd, webhooks
from .engines import build_engine
from .internet import build_authenticator, register_lockout_metrics, tls_settings
from .outbound import Originator, OutboundGauges
from .script import ScriptRun, Speech

log = logging.getLogger("sip_tts")


def build_cache(prompts: PromptsConfig) -> PromptCache:
    directory = prompts.resolve(prompts.cache.dir) if prompts.cache.dir else None
    return PromptCache(int(prompts.cache.max_mb * 2**20), directory)


def server_settings(cfg: ServerConfig, host: str, port: int, rtp_ports: tuple[int, int], engine: str) -> ServerSettings:
    """server.yaml as the SIP server takes it (every default is the schema's)."""
    advertised = cfg.sip.advertised_address or (host if host not in ("0.0.0.0", "::") else cfg.sip.advertised())
    reg, auth, limits = cfg.registration, cfg.auth, cfg.limits
    return ServerSettings(
        listen_host=host, listen_port=port, rtp_port_min=rtp_ports[0], rtp_port_max=rtp_ports[1],
        calls=CallSettings(advertised_host=advertised, codecs=list(cfg.codecs), max_calls=limits.max_calls,
                           hangup_after_prompt_ms=cfg.hangup_after_prompt_ms, media_timeout=cfg.media.timeout_s,
                           barge_in=cfg.media.barge_in, srtp=cfg.media.srtp, summary={"engine": engine}),
        user_agent=cfg.sip.user_agent, tcp=cfg.sip.tcp, dscp=cfg.media.dscp, tcp_idle_timeout=cfg.sip.tcp_idle_timeout_s,
        tcp_max_per_source=cfg.sip.tcp_max_connections_per_source, max_message_bytes=limits.max_message_bytes,
        registration=RegistrationConfig(reg.registrar, reg.aor, "", reg.username, reg.password, reg.expires,
                                        user_agent=cfg.sip.user_agent) if reg else None,
        authenticator=build_authenticator(auth) if auth else None, tls=tls_settings(cfg.sip.tls, cfg.source),
        admission=AdmissionPolicy(allow=list(cfg.access.allow), invite_rate=limits.invite_rate_per_source,
                                  invite_burst=limits.invite_burst_per_source,
                                  max_message_bytes=limits.max_message_bytes, max_headers=limits.max_headers))


class App:
    """``sip-tts serve``: build, start, run until SIGTERM (drain) and stop."""

    def __init__(self, cfg: ServerConfig, prompts: PromptsConfig, listen: str | None = None,
                 rtp_ports: tuple[int, int] | None = None, pid_file: str | None = None) -> None:
        self.cfg = cfg
        self.prompts = prompts
        self.host, self.port = parse_hostport(listen) if listen else (cfg.sip.listen_host, cfg.sip.listen_port)
        self.rtp_ports = rtp_ports or (cfg.rtp.port_min, cfg.rtp.port_max)
        self.pid_file = pid_file
        engine, self.voice = build_engine(cfg)
        self.engine = api.calls_first(engine, cfg)  # the HTTP API's utterances never queue ahead of a caller's
        self.http: api.HttpHandle | None = None
        self.cache = build_cache(prompts)
        self.cache.shared = fleet.shared_cache(cfg)  # the fleet's Redis, second level (None: off)
        self.speech: Speech | None = None
        self.server: SipServer | None = None
        self.originator: Originator | None = None
        self.live = None  # sip_tts.live.LiveCalls when the HTTP API is on
        self.metrics = None
        self.webhooks = webhooks.Webhooks(cfg.limits.webhooks_in_flight, cfg.limits.status_callbacks_queued)
        self._warming: set[asyncio.Task] = set()
        self._signals = 0
        self._drain, self._hang_up_now = asyncio.Event(), asyncio.Event()

    # -- what the server and the metrics ask of the application ------------------------------
    def route(self, info: CallInfo) -> ScriptRun | None:
        """The router: a new call's audio source (None: 404). A reload swaps ``speech``; calls in
        progress keep the one they started with."""
        assert self.speech is not None
        return self.speech.source(info, self.webhooks)

    def engine_up(self) -> bool:
        """An engine in its own process is down while it restarts; one in this process is always up."""
        return self.engine.available

    def health(self) -> tuple[int, str]:
        ua = self.server.ua if self.server is not None else None
        if ua is None or ua.draining:
            return 503, "draining"
        if ua.unavailable:
            return 503, "engine down"
        return (200, "ready") if ua.accepting else (503, "full")

    # -- life ---------------------------------------------------------------------------
    async def run(self) -> int:
        """Serve until a signal; the exit status."""
        if not self.cfg.sip.enabled:  # the HTTP API alone: a TTS server without SIP
            status = await self._start_engine()
            return status or await api.serve_alone(self.cfg, self.prompts, self.engine, self.voice)
        status = await self.start()
        if status:
            return status
        await self._drain.wait()
        await self.stop()
        return 0

    async def start(self) -> int:
        """Engine, prompts, server, metrics; 0, or the exit status of what failed."""
        engine = self.engine
        status = await self._start_engine()
        if status:
            return status
        try:
            self.speech = Speech.build(self.prompts, engine, self.voice, self.cache, self.cfg.media.barge_in)
        except ValueError as exc:
            log.error("%s: %s", shown_path(self.cfg.prompts_path()), exc)
            await engine.close()
            return 2
        if self.cfg.metrics is not None or self.cfg.api.enabled:
            from .metrics import Metrics

            self.metrics = Metrics(lambda: len(self.server.calls) if self.server else 0, engine.queue_depth,
                                   engine_stats=lambda: engine.stats, cache=lambda: self.cache,
                                   engine_health=lambda: (self.engine_up(), engine.restarts),
                                   pacer_late=lambda: self.server.clock.late_wakeups
                                   if self.server is not None and self.server.clock is not None else 0)
            self.engine.first_audio = self.metrics.call_engine_first_audio.observe
        settings = server_settings(self.cfg, self.host, self.port, self.rtp_ports, engine.name)
        if self.metrics is not None:
            register_lockout_metrics(self.metrics.registry, settings.authenticator)
        await self.webhooks.start()
        self.server = server = SipServer(settings, self.route, hooks=webhooks.StatusHooks(self.webhooks, self.metrics),
                                         available=self.engine_up)  # status callbacks (after the metrics)
        if self.cfg.api.enabled:  # calls handed to applications (sip_tts/live) are driven through the API
            from .live import LiveCalls

            self.live = LiveCalls(lambda: server.calls, server.hangup, self.cfg.api.max_call_streams_per_key,
                                  speech=lambda: self.speech, gauges=_leak_gauges(server))
            self.speech.live = self.live
            if self.metrics is not None:
                self.metrics.registry.register(self.live)
        if self.metrics is not None:
            self.metrics.registry.register(webhooks.WebhookCollector(self.webhooks))
        try:
            await server.start()
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", self.host, self.port, exc.strerror or exc)
            await engine.close()
            return 1
        _quiet_gc()
        assert server.outbound is not None
        self.originator = Originator(self.cfg, server.outbound, lambda: self.speech, self.webhooks,  # POST /v1/calls
                                     live=self.live)
        if self.metrics is not None:
            self.metrics.registry.register(OutboundGauges(server))
        if self.metrics is not None:
            try:
                self.http = await api.start_http(self.cfg, self.prompts, engine, self.voice, self.health,
                                                 self.metrics.registry, self.metrics.render,
                                                 live_calls=lambda: len(server.calls), live=self.live,
                                                 outbound=self.originator)
            except OSError as exc:
                where = self.cfg.api.listen if self.cfg.api.enabled else self.cfg.metrics.listen
                log.error("cannot serve http on %s: %s", where, exc.strerror or exc)
                await server.stop()
                await engine.close()
                return 1
        self._warm(self.speech)
        if self.pid_file:
            Path(self.pid_file).write_text(f"{os.getpid()}\n")
        systemd.notify(f"READY=1\nSTATUS=serving on {self.host}:{server.port}")
        loop = asyncio.get_running_loop()
        systemd.start_watchdog(loop)
        _diagnostics(server, loop)
        tcp = " and tcp" if self.cfg.sip.tcp else ""
        http_at = f", http api port {self.http.port}" if self.http is not None and self.http.port is not None else ""
        print(f"sip-tts ready: udp{tcp} {self.host}:{server.port}, engine {engine.name}{http_at}", flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        loop.add_signal_handler(signal.SIGHUP, self.reload_prompts)
        return 0

    async def _start_engine(self) -> int:
        try:
            await self.engine.start()
        except ImportError as exc:
            log.error("engine %s needs packages that are not installed (%s): see README, 'GPU engine'",
                      self.engine.name, exc)
            return 1
        except (RuntimeError, OSError, ValueError) as exc:
            log.error("engine %s failed to start: %s", self.engine.name, exc)
            return 1
        return 0

    async def stop(self) -> None:
        """Drain (calls in progress finish, new ones get 503; a second signal: hang up now), then stop."""
        assert self.server is not None
        systemd.notify("STOPPING=1\nSTATUS=draining")
        left = await self.server.drain(self.cfg.drain_timeout_s, interrupted=self._hang_up_now)
        log.info("stopping: hanging up %d call(s)", left)
        await self.server.stop()
        await self.webhooks.close()
        if self.http is not None:
            await self.http.stop()
        for task in self._warming:
            task.cancel()
        await self.engine.close()
        if self.cache.shared is not None:
            await self.cache.shared.aclose()
        if self.pid_file:
            Path(self.pid_file).unlink(missing_ok=True)

    def _on_signal(self) -> None:
        self._signals += 1
        (self._drain if self._signals == 1 else self._hang_up_now).set()

    def reload_prompts(self) -> None:
        """SIGHUP: re-read the prompts file; a bad file is refused and the running prompts stay.
        Calls in progress keep what they are playing. (server.yaml changes need a restart.)"""
        try:
            prompts = load_prompts(self.cfg.prompts_path())
            speech = Speech.build(prompts, self.engine, self.voice, self.cache, self.cfg.media.barge_in)
            speech.live = self.live
        except (ConfigError, ValueError) as exc:
            log.error("reload refused, keeping the running prompts:\n%s", exc)
            return
        self.prompts, self.speech = prompts, speech
        for line in prompts.warnings:
            log.warning("%s", line)
        log.info("reloaded %s: %d routes", shown_path(self.cfg.prompts_path()), len(prompts.routes))
        self._warm(speech)

    def _warm(self, speech: Speech) -> None:
        """Render the prompts file's fixed prompts into the cache, in the background."""
        if not speech.prompts.cache.warm:
            return
        task = asyncio.ensure_future(speech.warm(list(self.cfg.codecs)))
        self._warming.add(task)

        def done(t: asyncio.Task) -> None:
            self._warming.discard(t)
            if not t.cancelled() and t.exception() is None:
                log.info("prompt cache: %d prompts rendered, %d cached", t.result(), len(self.cache))

        task.add_done_callback(done)


def _leak_gauges(server: SipServer) -> dict:
    """What must return to zero (or its idle value) after calls end, whatever went wrong in them."""
    return {"sip_tts_rtp_ports_in_use": ("RTP ports held by calls",
                                         lambda: server.table.ports.in_use if server.table is not None else 0),
            "sip_tts_sip_calls_open": ("calls the SIP user agent has not ended",
                                       lambda: server.ua.active_calls if server.ua is not None else 0),
            "sip_tts_asyncio_tasks": ("tasks on the server's event loop", lambda: len(asyncio.all_tasks()))}


def _quiet_gc() -> None:
    """Everything loaded so far lives for the whole process: keep it out of the collector's scans,
    and collect young objects less often (full collections of a big heap paused the loop for tens
    of milliseconds under load). Collections over 10 ms are logged (a late frame for every call)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            ms = (time.perf_counter() - started[0]) * 1000
            if ms > 10:
                log.warning("gc pause %.0f ms (generation %d, %d collected)", ms, info.get("generation", -1),
                            info.get("collected", 0))

    gc.callbacks.append(callback)


def _diagnostics(server: SipServer, loop: asyncio.AbstractEventLoop) -> None:
    if os.environ.get("SIP_TTS_PACER_DIAG") and server.clock is not None:
        server.clock.enable_diagnosis()  # each late pacing wake-up logged with what the thread did
    stall_ms = os.environ.get("SIP_TTS_LOOP_STALL_MS")
    if stall_ms:  # asyncio names every callback that holds the loop longer than this
        loop.set_debug(True)
        loop.slow_callback_duration = float(stall_ms) / 1000
