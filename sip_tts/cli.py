"""``sip-tts``: serve calls, render a prompt to a WAV, or check a config."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import wave
from pathlib import Path

import numpy as np

from config import ConfigError, load_prompts, load_server
from config.loader import shown_path
from config.schema import PromptsConfig, ServerConfig
from engine.audio import decode_g711
from engine.base import TtsEngine, VoiceSpec
from engine.prompt_cache import PromptCache
from media import SAMPLE_RATE, SILENCE
from telephony.call import CallHandle, CallInfo
from telephony.rtp.dtmf import DtmfDigit
from telephony.rtp.pacer import FrameQueue

from . import call_cli, logs
from .app import App
from .engines import SpokenPrompt, build_engine
from .script import Speech

log = logging.getLogger("sip_tts")
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "server.yaml"


def _load(path: str) -> tuple[ServerConfig, PromptsConfig]:
    """Both files, validated before anything starts: a bad one stops start-up."""
    cfg = load_server(path)
    return cfg, load_prompts(cfg.prompts_path())


async def serve(cfg: ServerConfig, prompts: PromptsConfig, listen: str | None,
                rtp_ports: tuple[int, int] | None = None, pid_file: str | None = None) -> int:
    """Serve calls until SIGTERM (drain) or a second signal (hang up now); the exit status."""
    return await App(cfg, prompts, listen, rtp_ports, pid_file).run()


async def walk(cfg: ServerConfig, prompts: PromptsConfig, number: str, digits: list[str], codec: str,
               caller: str = "5551234") -> tuple[np.ndarray, list[str]]:
    """What a caller of ``number`` hears walking the script, pressing ``digits`` when asked."""
    engine, voice = build_engine(cfg)
    await engine.start()
    try:
        speech = Speech.build(prompts, engine, voice, PromptCache(64 * 2**20))
        run = speech.source(CallInfo("say", number, caller, codec))
        if run is None:
            route = prompts.lookup(number, caller)
            raise ValueError(f"the route for {number} asks an application (webhook): nothing to walk offline"
                             if route is not None and route.webhook else f"no route for {number} and no default")
        queue = FrameQueue(SILENCE[codec])
        handle = _OfflineCall(run.info, queue)
        for d in digits:
            handle.digit_arrived(DtmfDigit(d, 100, "cli"))
        await run.run(handle)
        unused = handle.pending_digits()
        if unused:
            raise ValueError(f"--digits: {','.join(unused)} never used: the script ended before asking for "
                             f"{'it' if len(unused) == 1 else 'them'}")
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

    def pending_digits(self) -> list[str]:
        """Digits given on the command line that the script never asked for."""
        left = []
        while not self._digits.empty():
            left.append(self._digits.get_nowait().digit)
        return left


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


def write_wav(path: str, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
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
    p_serve.add_argument("--api-listen", help="HOST:PORT, overrides api.listen (one HTTP port per instance)")
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
    call_cli.add_parser(sub, str(DEFAULT_CONFIG))
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
        engine_name = cfg.engine.kind
        errors = [f"{shown_path(cfg.prompts_path())}: voices.{name}: needs engine {v.engine}; this server runs {engine_name}"
                  for name, v in prompts.voices.items() if v.engine is not None and v.engine != engine_name]
        if errors:
            print("config error:\n" + "\n".join(errors), file=sys.stderr)
            return 2
        print(f"{shown_path(args.config)}: ok ({len(prompts.routes)} routes, {len(prompts.scripts)} scripts, "
              f"default {'set' if prompts.default else 'none'}, {len(prompts.warnings)} warnings)")
        return 0
    if args.command == "call":
        return call_cli.run(args, cfg.api.listen)
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
        print(f"{args.out}: {len(samples) / SAMPLE_RATE:.2f} s")
        return 0
    rtp_ports = None
    if args.rtp_ports:
        lo, _, hi = args.rtp_ports.partition("-")
        if not (lo.isdigit() and hi.isdigit() and 1024 <= int(lo) < int(hi) <= 65535):
            print(f"--rtp-ports: expected MIN-MAX within 1024-65535, got {args.rtp_ports!r}", file=sys.stderr)
            return 2
        rtp_ports = (int(lo), int(hi))
    if args.api_listen:
        from pydantic import ValidationError

        from config.schema import ApiSettings
        try:
            api = ApiSettings.model_validate({**cfg.api.model_dump(), "listen": args.api_listen})
        except ValidationError as exc:
            print(f"--api-listen {args.api_listen!r}: {exc.errors()[0]['msg']}", file=sys.stderr)
            return 2
        cfg = cfg.model_copy(update={"api": api})
    try:
        return asyncio.run(serve(cfg, prompts, args.listen, rtp_ports, args.pid_file))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
