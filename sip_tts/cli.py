"""``sip-tts``: serve calls, render a prompt to a WAV, or check a config."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import wave
from pathlib import Path

import numpy as np

from config import ConfigError, load_prompts, load_server
from config.schema import EspeakSettings, PromptsConfig, ServerConfig, parse_hostport
from engine.audio import decode_g711
from engine.base import TtsEngine, VoiceSpec
from engine.prompt_cache import PromptCache
from telephony.call import CallHandle, CallInfo
from telephony.rtp.dtmf import DtmfDigit
from telephony.rtp.pacer import SILENCE, FrameQueue
from telephony.admission import AdmissionPolicy
from telephony.sip.auth import DigestAuthenticator
from telephony.sip.registration import RegistrationConfig
from telephony.server import ServerSettings, SipServer

from . import logs, systemd
from .engines import SpokenPrompt, build_engine
from .script import ScriptRun, Speech

log = logging.getLogger("sip_tts")
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "server.yaml"


def _load(path: str) -> tuple[ServerConfig, PromptsConfig]:
    """Both files, validated before anything starts: a bad one stops start-up."""
    cfg = load_server(path)
    return cfg, load_prompts(cfg.prompts_path())


async def serve(cfg: ServerConfig, prompts: PromptsConfig, listen: str | None,
                rtp_ports: tuple[int, int] | None = None, pid_file: str | None = None) -> int:
    engine, voice = build_engine(cfg)
    try:
        await engine.start()
    except ImportError as exc:
        log.error("engine %s needs packages that are not installed (%s): see README, 'GPU engine'", engine.name, exc)
        return 1
    except (RuntimeError, OSError, ValueError) as exc:
        log.error("engine %s failed to start: %s", engine.name, exc)
        return 1
    host, port = parse_hostport(listen) if listen else (cfg.sip.listen_host, cfg.sip.listen_port)
    rtp_min, rtp_max = rtp_ports or (cfg.rtp.port_min, cfg.rtp.port_max)
    settings = ServerSettings(
        listen_host=host, listen_port=port,
        advertised_host=cfg.sip.advertised_address or (host if host not in ("0.0.0.0", "::") else cfg.sip.advertised()),
        rtp_port_min=rtp_min, rtp_port_max=rtp_max, codecs=list(cfg.codecs),
        max_calls=cfg.limits.max_calls, hangup_after_prompt_ms=cfg.hangup_after_prompt_ms,
        user_agent=cfg.sip.user_agent, tcp=cfg.sip.tcp, media_timeout=cfg.media.timeout_s, dscp=cfg.media.dscp,
        barge_in=cfg.media.barge_in, summary={"engine": engine.name}, tcp_idle_timeout=cfg.sip.tcp_idle_timeout_s,
        tcp_max_per_source=cfg.sip.tcp_max_connections_per_source, max_message_bytes=cfg.limits.max_message_bytes,
        registration=RegistrationConfig(cfg.registration.registrar, cfg.registration.aor, "",
                                        cfg.registration.username, cfg.registration.password,
                                        cfg.registration.expires, user_agent=cfg.sip.user_agent)
        if cfg.registration else None,
        authenticator=DigestAuthenticator(cfg.auth.realm, dict(cfg.auth.users), tuple(cfg.auth.algorithms),
                                          cfg.auth.nonce_ttl_s) if cfg.auth else None,
        admission=AdmissionPolicy(allow=list(cfg.access.allow), invite_rate=cfg.limits.invite_rate_per_source,
                                  invite_burst=cfg.limits.invite_burst_per_source,
                                  max_message_bytes=cfg.limits.max_message_bytes, max_headers=cfg.limits.max_headers))

    cache = build_cache(prompts)
    try:
        speech = Speech.build(prompts, engine, voice, cache, cfg.media.barge_in)
    except ValueError as exc:
        log.error("%s: %s", cfg.prompts_path(), exc)
        await engine.close()
        return 2
    warming: set[asyncio.Task] = set()

    def warm(sp: Speech) -> None:
        if sp.prompts.cache.warm:
            task = asyncio.ensure_future(sp.warm(list(cfg.codecs)))
            warming.add(task)
            task.add_done_callback(lambda t: (warming.discard(t), t.cancelled() or t.exception() or
                                              log.info("prompt cache: %d prompts rendered, %d cached",
                                                       t.result(), len(cache))))

    def route(info: CallInfo) -> ScriptRun | None:
        return speech.source(info)

    def engine_up() -> bool:
        """An engine in its own process is down while it restarts; one in this process is always up."""
        return bool(getattr(engine, "available", True))

    metrics = None
    if cfg.metrics is not None:
        from .metrics import Metrics

        queue = getattr(engine, "queue_depth", None)
        metrics = Metrics(lambda: len(server.calls), queue if callable(queue) else None,
                          engine_stats=lambda: getattr(engine, "stats", None), cache=lambda: cache,
                          engine_health=lambda: (engine_up(), getattr(engine, "restarts", 0)),
                          pacer_late=lambda: server.clock.late_wakeups if server.clock is not None else 0)
    server = SipServer(settings, route, hooks=metrics, available=engine_up)
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
        await engine.close()
        return 1
    tcp = " and tcp" if cfg.sip.tcp else ""
    # Everything loaded so far lives for the whole process: keep it out of the collector's
    # scans, and collect young objects less often (full collections of a big heap paused
    # the loop for tens of milliseconds under load).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    _watch_gc()
    if metrics is not None and cfg.metrics is not None:
        from .metrics import serve_http

        def health() -> tuple[int, str]:
            ua = server.ua
            if ua is None or ua.draining:
                return 503, "draining"
            if ua.unavailable:
                return 503, "engine down"
            return (200, "ready") if ua.accepting else (503, "full")

        mhost, mport = parse_hostport(cfg.metrics.listen, 9100)
        try:
            await serve_http(mhost, mport, metrics, health)
        except OSError as exc:
            log.error("cannot serve metrics on %s: %s", cfg.metrics.listen, exc.strerror or exc)
            await server.stop()
            await engine.close()
            return 1
    warm(speech)
    if pid_file:
        Path(pid_file).write_text(f"{os.getpid()}\n")
    systemd.notify(f"READY=1\nSTATUS=serving on {host}:{server.port}")
    systemd.start_watchdog(asyncio.get_running_loop())
    if os.environ.get("SIP_TTS_PACER_DIAG") and server.clock is not None:
        server.clock.enable_diagnosis()  # diagnosis: each late pacing wake-up logged with what the thread did
    stall_ms = os.environ.get("SIP_TTS_LOOP_STALL_MS")
    if stall_ms:  # diagnosis: asyncio names every callback that holds the loop longer than this
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = float(stall_ms) / 1000
    print(f"sip-tts ready: udp{tcp} {host}:{server.port}, engine {engine.name}", flush=True)
    signals = 0
    first, second = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        (first if signals == 1 else second).set()

    def reload_prompts() -> None:
        # SIGHUP: re-read the prompts file; a bad file is refused and the running prompts stay.
        # Calls in progress keep what they are playing. (server.yaml changes need a restart.)
        nonlocal prompts, speech
        try:
            prompts = load_prompts(cfg.prompts_path())
            new = Speech.build(prompts, engine, voice, cache, cfg.media.barge_in)
        except (ConfigError, ValueError) as exc:
            log.error("reload refused, keeping the running prompts:\n%s", exc)
            return
        speech = new  # calls in progress keep the Speech (and script) they started with
        for line in prompts.warnings:
            log.warning("%s", line)
        log.info("reloaded %s: %d routes", cfg.prompts_path(), len(prompts.routes))
        warm(speech)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGHUP, reload_prompts)
    await first.wait()
    systemd.notify("STOPPING=1\nSTATUS=draining")
    # First signal: drain (calls in progress finish, new ones get 503). A second one: hang up now.
    left = await server.drain(cfg.drain_timeout_s, interrupted=second)
    log.info("stopping: hanging up %d call(s)", left)
    await server.stop()
    for task in warming:
        task.cancel()
    await engine.close()
    if pid_file:
        Path(pid_file).unlink(missing_ok=True)
    return 0


def _watch_gc() -> None:
    """Log garbage collections that pause the loop for more than 10 ms (a late frame for every call)."""
    import time as _time

    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = _time.perf_counter()
        else:
            ms = (_time.perf_counter() - started[0]) * 1000
            if ms > 10:
                log.warning("gc pause %.0f ms (generation %d, %d collected)", ms, info.get("generation", -1),
                            info.get("collected", 0))

    gc.callbacks.append(callback)


def build_cache(prompts: PromptsConfig) -> PromptCache:
    directory = prompts.resolve(prompts.cache.dir) if prompts.cache.dir else None
    return PromptCache(int(prompts.cache.max_mb * 2**20), directory)


async def walk(cfg: ServerConfig, prompts: PromptsConfig, number: str, digits: list[str], codec: str,
               caller: str = "5551234") -> tuple[np.ndarray, list[str]]:
    """What a caller of ``number`` hears walking the script, pressing ``digits`` when asked."""
    engine, voice = build_engine(cfg)
    await engine.start()
    try:
        speech = Speech.build(prompts, engine, voice, PromptCache(64 * 2**20))
        run = speech.source(CallInfo("say", number, caller, codec))
        if run is None:
            raise ValueError(f"no route for {number} and no default")
        queue = FrameQueue(SILENCE[codec])
        handle = _OfflineCall(run.info, queue)
        for d in digits:
            handle.digit_arrived(DtmfDigit(d, 100, "cli"))
        await run.run(handle)
        queue.finish()
        frames = []
        while (frame := queue.pop()) is not None:
            frames.append(frame)
        return decode_g711(b"".join(frames), codec), run.heard
    finally:
        await engine.close()


class _OfflineCall(CallHandle):
    """A caller who listens to each prompt to its end, then presses the next digit when asked."""

    async def played(self) -> None:
        return None

    async def barge_digit(self, timeout: float) -> str | None:
        await asyncio.sleep(0)
        return None

    def take_digit(self) -> str | None:
        return None

    async def wait_digit_or_played(self) -> str | None:
        return None

    async def next_digit(self, timeout: float) -> str | None:
        return self._digits.get_nowait().digit if not self._digits.empty() else None  # no digits left: a timeout


async def render(engine: TtsEngine, voice: VoiceSpec, text: str, codec: str) -> np.ndarray:
    """What a caller hears: 8 kHz int16 after the G.711 round trip."""
    await engine.start()
    queue = FrameQueue(SILENCE[codec])
    await SpokenPrompt(engine, text, voice, codec).run(CallHandle(CallInfo("say", "", "", codec), queue))
    queue.finish()
    frames = []
    while (frame := queue.pop()) is not None:
        frames.append(frame)
    await engine.close()
    return decode_g711(b"".join(frames), codec)


def write_wav(path: str, samples: np.ndarray, rate: int = 8000) -> None:
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype=np.int16).tobytes())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["verify-engine"]:  # its own arguments and module (no prompts file needed)
        from .verify_engine import main as verify_engine

        return verify_engine(argv[1:])
    parser = argparse.ArgumentParser(prog="sip-tts", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="answer calls and speak their prompts")
    p_serve.add_argument("--config", default=str(DEFAULT_CONFIG))
    p_serve.add_argument("--listen", help="HOST:PORT, overrides sip.listen")
    p_serve.add_argument("--rtp-ports", help="MIN-MAX, overrides rtp.port_min/port_max (one range per instance)")
    p_serve.add_argument("--log-level", default="INFO")
    p_serve.add_argument("--log-format", choices=["auto", "json", "console"], default="auto",
                         help="json: one object per line; console: for people; auto: console on a terminal")
    p_serve.add_argument("--pid-file", help="write the process id here (for `sip-tts reload`)")
    p_say = sub.add_parser("say", help="render TEXT, or a route's script, as a caller would hear it")
    p_say.add_argument("text", nargs="?")
    p_say.add_argument("--route", help="walk the script of this dialed number instead of TEXT")
    p_say.add_argument("--digits", default="", help="digits pressed at menus and prompts, e.g. 1,2 (with --route)")
    p_say.add_argument("--caller", default="5551234", help="the caller's number (with --route)")
    p_say.add_argument("--out", required=True, help="output WAV (8 kHz, 16-bit, mono)")
    p_say.add_argument("--config", default=str(DEFAULT_CONFIG))
    p_say.add_argument("--codec", choices=["PCMU", "PCMA"], default="PCMU")
    p_check = sub.add_parser("check-config", help="validate server and prompts files")
    p_check.add_argument("--config", default=str(DEFAULT_CONFIG))
    sub.add_parser("verify-engine", help="check the Chatterbox engine's fast paths against the exact ones "
                   "(sip-tts verify-engine --help)")
    p_reload = sub.add_parser("reload", help="make a running server re-read its prompts file (SIGHUP)")
    p_reload.add_argument("--pid-file", required=True, help="the --pid-file the server was started with")
    p_reload.add_argument("--config", default=str(DEFAULT_CONFIG))
    args = parser.parse_args(argv)

    logs.configure(getattr(args, "log_level", "INFO"), getattr(args, "log_format", "auto"))
    try:
        cfg, prompts = _load(args.config)
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        for line in prompts.warnings:
            print(f"warning: {line}")
        engine_name = "espeak" if isinstance(cfg.engine, EspeakSettings) else "chatterbox"
        errors = [f"{cfg.prompts_path()}: voices.{name}: needs engine {v.engine}; this server runs {engine_name}"
                  for name, v in prompts.voices.items() if v.engine is not None and v.engine != engine_name]
        if errors:
            print("config error:\n" + "\n".join(errors), file=sys.stderr)
            return 2
        print(f"{args.config}: ok ({len(prompts.routes)} routes, {len(prompts.scripts)} scripts, "
              f"default {'set' if prompts.default else 'none'}, {len(prompts.warnings)} warnings)")
        return 0
    if args.command == "reload":
        try:
            os.kill(int(Path(args.pid_file).read_text().strip()), signal.SIGHUP)
        except (OSError, ValueError) as exc:
            print(f"reload: {args.pid_file}: {exc}", file=sys.stderr)
            return 1
        print("reload requested (the server logs whether the new prompts were accepted)")
        return 0
    if args.command == "say":
        if args.route is not None:
            digits = [d.strip() for d in args.digits.split(",") if d.strip()]
            try:
                samples, heard = asyncio.run(walk(cfg, prompts, args.route, digits, args.codec, args.caller))
            except ValueError as exc:
                print(f"say: {exc}", file=sys.stderr)
                return 2
            for line in heard:
                print(f"  said: {line}")
        elif args.text:
            engine, voice = build_engine(cfg)
            samples = asyncio.run(render(engine, voice, args.text, args.codec))
        else:
            print("say: give TEXT or --route NUMBER", file=sys.stderr)
            return 2
        write_wav(args.out, samples)
        print(f"{args.out}: {len(samples) / 8000:.2f} s")
        return 0
    rtp_ports = None
    if args.rtp_ports:
        lo, _, hi = args.rtp_ports.partition("-")
        if not (lo.isdigit() and hi.isdigit() and 1024 <= int(lo) < int(hi) <= 65535):
            print(f"--rtp-ports: expected MIN-MAX within 1024-65535, got {args.rtp_ports!r}", file=sys.stderr)
            return 2
        rtp_ports = (int(lo), int(hi))
    try:
        return asyncio.run(serve(cfg, prompts, args.listen, rtp_ports, args.pid_file))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
