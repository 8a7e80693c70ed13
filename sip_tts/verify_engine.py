"""``sip-tts verify-engine``: the Chatterbox engine's fast paths against their exact ones, here.

Run it where the weights are (``--config server.yaml`` or ``--model-dir DIR``): it
loads the checkpoint on the configured device, teacher-forces a fixed set of
sentences through stock chatterbox-tts code and through every fast path the
configuration enables (``engine/chatterbox/verify.py`` says what is compared),
prints a table, writes JSON (``--json``) and markdown (``--md``), and exits 1
naming each failing check and the setting that turns its path off. ``--startup``
also starts the engine as the server would and records the start-up time, its
checks and any fall-back.

Exit codes: 0 all checks passed; 1 a check failed; 2 bad arguments or config.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import logging
import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("sip_tts.verify_engine")


def _options(args: argparse.Namespace) -> tuple[Any, str | None]:
    """ChatterboxOptions from the config (or the model dir and flags), and the voice WAV if any."""
    from engine.chatterbox.engine import ChatterboxOptions

    if args.config:
        from config import ConfigError, load_server
        from config.schema import ChatterboxSettings

        try:
            cfg = load_server(args.config)
        except ConfigError as exc:
            raise SystemExit(_fail(f"config error:\n{exc}"))
        if not isinstance(cfg.engine, ChatterboxSettings):
            raise SystemExit(_fail(f"{args.config}: engine.kind is not chatterbox: nothing to verify"))
        from .chatterbox_options import chatterbox_options

        options, wav = chatterbox_options(cfg)
    else:
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        options, wav = ChatterboxOptions(args.model_dir, device=device), None
    for name in ("device", "dtype", "vocoder_dtype", "reference_attention"):
        if getattr(args, name, None):
            setattr(options, name, getattr(args, name))
    if args.no_cuda_graphs:
        options.cuda_graphs = False
    return options, wav


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 2


def _card(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()})"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent.parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _startup(options: Any) -> dict[str, Any]:
    """Start the engine as the server does (checks, graphs, watermark) and time it."""
    from engine.chatterbox.engine import ChatterboxEngine

    async def main() -> dict[str, Any]:
        engine = ChatterboxEngine(options)
        t0 = time.perf_counter()
        await engine.start()
        wall = time.perf_counter() - t0
        out = dict(seconds=round(wall, 2), checks_seconds=round(engine.checks_seconds, 2),
                   checks=[c.as_dict() for c in engine.checks],
                   fallbacks={k: v if math.isfinite(v) else str(v) for k, v in engine.fallbacks.items()},
                   watermark=engine._watermarker is not None)
        await engine.close()
        return out

    return asyncio.run(main())


def run(args: argparse.Namespace) -> int:
    import torch

    from engine.chatterbox import verify
    from engine.chatterbox.checkpoint import CheckpointError, load_checkpoint
    from engine.chatterbox.t3_runner import SamplingParams

    options, wav = _options(args)
    if options.device.startswith("cuda") and not torch.cuda.is_available():
        return _fail(f"device {options.device}: no GPU is visible")
    started = time.perf_counter()
    try:
        ckpt = load_checkpoint(options.model_dir, options.device)
    except CheckpointError as exc:
        return _fail(f"verify-engine: {exc}")
    conds = ckpt.conds
    if wav:
        from engine.chatterbox.voices import conditionals_from_wav

        cache = Path(options.voice_cache_dir) if options.voice_cache_dir else None
        conds = conditionals_from_wav(ckpt, Path(wav), cache, options.device)
    from chatterbox.tts_turbo import punc_norm

    def tokenize(text: str) -> torch.Tensor:
        return ckpt.tokenizer(punc_norm(text), return_tensors="pt").input_ids[0]

    sentences = verify.SENTENCES[: args.sentences] if args.sentences else verify.SENTENCES
    plan = verify.Plan(device=options.device, dtype=options.dtype, vocoder_dtype=options.vocoder_dtype,
                       reference_attention=options.reference_attention, cuda_graphs=options.cuda_graphs,
                       sentences=sentences, max_tokens=args.max_tokens,
                       only=tuple(x.strip() for x in args.only.split(",") if x.strip()) if args.only else (),
                       sampling=SamplingParams(options.temperature, options.top_k, options.top_p,
                                               options.repetition_penalty))
    checks = verify.run_checks(ckpt, conds, tokenize, plan, log=lambda s: print(f"  {s}", file=sys.stderr))
    seconds = time.perf_counter() - started
    del ckpt
    report: dict[str, Any] = dict(
        card=_card(options.device), device=options.device, date=_dt.datetime.now(_dt.timezone.utc).isoformat(
            timespec="seconds"), commit=_commit(), model_dir=str(options.model_dir), voice=wav or "conds.pt",
        settings=dict(dtype=plan.dtype, vocoder_dtype=plan.vocoder_dtype, reference_attention=plan.reference_attention,
                      cuda_graphs=plan.cuda_graphs, max_tokens=plan.max_tokens),
        sentences=[{"label": k, "text": t} for k, t in sentences], seconds=round(seconds, 1),
        checks=[c.as_dict() for c in checks])
    if args.startup:
        report["startup"] = _startup(options)
    failed = [c for c in checks if not c.passed]
    report["passed"] = not failed
    report["failed_paths"] = sorted({c.path for c in failed})
    md = _markdown(report, checks)
    print(md)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(md + "\n")
    for c in failed:
        print(f"verify-engine: FAILED {c.name} = {c.figure:.4g} (threshold {'>=' if c.higher_is_better else '<='} "
              f"{c.threshold:.4g}, worst on {c.detail}): path {c.path}; turn it off with {c.setting}",
              file=sys.stderr)
    return 1 if failed else 0


def _markdown(report: dict[str, Any], checks: list) -> str:
    from engine.chatterbox import verify

    lines = [f"# verify-engine: {'passed' if report['passed'] else 'FAILED: ' + ', '.join(report['failed_paths'])}",
             "", f"{report['card']}, {report['date']}, commit {report['commit']}, checkpoint {report['model_dir']}, "
             f"voice {report['voice']}; settings {report['settings']}; {len(report['sentences'])} sentences "
             f"teacher-forced, {report['seconds']} s.", "", verify.table(checks)]
    if "startup" in report:
        st = report["startup"]
        lines += ["", f"Start-up (engine as the server starts it): {st['seconds']} s, of which start-up checks "
                  f"{st['checks_seconds']} s; watermark {'on' if st['watermark'] else 'off'}; fall-backs: "
                  f"{st['fallbacks'] or 'none'}.", "", verify.table([verify.Check(
                      c["name"], float(c["figure"]) if c["figure"] is not None else float("nan"), c["threshold"],
                      c["higher_is_better"], c["detail"], c["skipped"]) for c in st["checks"]])]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="sip-tts verify-engine", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="server.yaml with engine.kind chatterbox (its checkpoint, device, voice, paths)")
    src.add_argument("--model-dir", help="a checkpoint directory (defaults for everything else)")
    p.add_argument("--device", help="override the device (cuda, cuda:1, cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="override T3's and the flow's dtype")
    p.add_argument("--vocoder-dtype", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--reference-attention", choices=["block_causal", "full"])
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--sentences", type=int, default=0, help="only the first N of the fixed sentences")
    p.add_argument("--max-tokens", type=int, default=200, help="speech tokens per sentence (default 200)")
    p.add_argument("--only", help="comma-separated check prefixes to run (t3, flow.dtype, vocoder, stream ...)")
    p.add_argument("--startup", action="store_true", help="also start the engine and record its start-up")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--md", help="write the table here")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except SystemExit as exc:
        return int(exc.code or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
