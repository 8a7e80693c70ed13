"""What the engine's start-up checks and the watermark cost: start-up time, first audio, per window.

    python benchmarks/startup_cost.py [--device cuda] [--model-dir DIR] [--out DIR]

The engine (``ChatterboxEngine``, as the server runs it) is started twice on the
same checkpoint (default: the benchmarks' random full-size one): without start-up
checks or watermark, and with both (the defaults). For each: start-up seconds (checks' share), then first audio (submit
→ first chunk) of ``--utterances`` utterances one at a time and of ``--streams``
at once. With the watermark: its cost per window (the marking call alone, per
chunk size), and Perth's detector on the streamed output joined, on the same
text marked whole, after an 8 kHz μ-law round trip, and unmarked.

Writes startup_cost.json and startup_cost.md (card, date, commit) into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.base import VoiceSpec  # noqa: E402
from engine.chatterbox.engine import ChatterboxEngine, ChatterboxOptions  # noqa: E402
from engine.chatterbox.random_checkpoint import benchmark_checkpoint  # noqa: E402

TEXTS = ["Thank you for calling. Your appointment is confirmed for tomorrow at nine in the morning.",
         "Please hold the line while I look that up for you.",
         "Press one for sales, two for support, or zero for an operator."]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


async def first_audio(engine: ChatterboxEngine, n: int, concurrent: int) -> dict:
    """First-audio latency (ms) of ``n`` utterances, ``concurrent`` at a time, and every chunk."""
    lat: list[float] = []
    chunks: list[list[np.ndarray]] = []

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        got: list[np.ndarray] = []
        async for c in engine.stream(TEXTS[i % len(TEXTS)], VoiceSpec("v", (("seed", i + 1),))):
            if not got:
                lat.append((time.perf_counter() - t0) * 1000)
            got.append(c)
        chunks.append(got)

    for start in range(0, n, concurrent):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + concurrent))))
    return dict(p50_ms=round(pct(lat, 50), 1), p95_ms=round(pct(lat, 95), 1), n=len(lat)), chunks


LONG_TEXT = ("Thank you for calling the clinic. Your appointment with doctor Patel is confirmed for Tuesday morning at "
        "nine. Please bring your insurance card, the letter we sent you, and a list of the medicines you take. "
        "If you need to change the appointment, call us at least one day before, between eight and five. ")


async def long_text_gaps(engine: ChatterboxEngine, repeat: int) -> dict:
    """A text split into several utterances, played by a caller who starts at its first chunk:
    the longest time the caller would wait for audio (0: no gap at any join), and where."""
    text = LONG_TEXT * repeat
    pieces = engine.pieces(text)
    t0 = time.perf_counter()
    played = None  # when the audio received so far runs out
    worst, chunks = 0.0, 0
    async for c in engine.stream(text, VoiceSpec("v", (("seed", 3),))):
        now = time.perf_counter()
        if played is None:
            played, first = now, now - t0
        worst = max(worst, now - played)
        played = max(played, now) + c.size / 24000
        chunks += 1
    return dict(utterances=len(pieces), chunks=chunks, first_audio_ms=round(first * 1000, 1),
                longest_wait_ms=round(worst * 1000, 1))


async def run_variant(opts: ChatterboxOptions, utterances: int, streams: int,
                      long_repeat: int) -> tuple[dict, ChatterboxEngine, list]:
    engine = ChatterboxEngine(opts)
    t0 = time.perf_counter()
    await engine.start()
    def num(x: float) -> float | str:
        return round(x, 4) if math.isfinite(x) else str(x)

    out = dict(startup_s=round(time.perf_counter() - t0, 2), checks_s=round(engine.checks_seconds, 2),
               fallbacks={k: num(v) for k, v in engine.fallbacks.items()},
               checks={c.name: (None if c.skipped else num(c.figure)) for c in engine.checks})
    await first_audio(engine, 2, 1)  # warm-up (allocator, first prefill shapes)
    out["one_at_a_time"], chunks = await first_audio(engine, utterances, 1)
    out[f"{streams}_at_once"], _ = await first_audio(engine, streams, streams)
    out["long_text"] = await long_text_gaps(engine, long_repeat) if long_repeat else None
    return out, engine, chunks


def watermark_figures(engine: ChatterboxEngine, chunks: list[list[np.ndarray]]) -> dict:
    """Cost per window of the marking call and the detector's figures (on the engine's device)."""
    import soxr

    from engine.audio import decode_g711, encode_g711, float_to_int16

    wm = engine._watermarker
    assert wm is not None
    costs: dict[int, list[float]] = {}
    raw = [c for utt in chunks for c in utt]
    for c in raw[:60]:
        t0 = time.perf_counter()
        wm.apply(c)
        if engine.options.device.startswith("cuda"):
            torch.cuda.synchronize()
        costs.setdefault(round(c.size / 24000, 2), []).append((time.perf_counter() - t0) * 1000)
    streamed = np.concatenate(chunks[0])  # marked window by window by the engine
    figures = dict(cost_ms_by_window_s={str(k): round(float(np.median(v)), 2) for k, v in sorted(costs.items())},
                   detector_streamed=round(wm.detect(streamed), 3))
    line = decode_g711(encode_g711(float_to_int16(soxr.resample(streamed, 24000, 8000)), "PCMU"), "PCMU")
    back = soxr.resample(line.astype(np.float32) / 32768, 8000, 24000)
    figures["detector_streamed_after_8k_pcmu"] = round(wm.detect(back), 3)
    return figures


async def main_async(args: argparse.Namespace) -> dict:
    model_dir = args.model_dir or str(benchmark_checkpoint(args.random_dir))
    base = dict(device=args.device, dtype=args.dtype, max_streams=max(8, args.streams), max_tokens=args.max_tokens)
    # plain: neither; the other: both. Start-up differs by the checks (and loading Perth), first audio by
    # the watermark (the checks change nothing after start-up unless a path falls back).
    variants = {"plain": dict(startup_checks=False, watermark=False),
                "checks+watermark": dict(startup_checks=True, watermark=True)}
    results = {}
    for name, kw in variants.items():
        out, engine, chunks = await run_variant(ChatterboxOptions(model_dir, **base, **kw), args.utterances,
                                                args.streams, args.long_repeat)
        if engine._watermarker is not None:
            out["watermark"] = watermark_figures(engine, chunks)
            unmarked = results["plain"].pop("_audio")
            out["watermark"]["detector_unmarked"] = round(engine._watermarker.detect(unmarked), 3)
            whole = engine._watermarker.apply(unmarked)
            out["watermark"]["detector_whole_utterance"] = round(engine._watermarker.detect(whole), 3)
        elif name == "plain":
            out["_audio"] = np.concatenate(chunks[0])
        await engine.close()
        results[name] = out
        print(name, {k: v for k, v in out.items() if k != "_audio"}, flush=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model-dir")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--random-dir", default="/tmp/chatterbox-random")
    ap.add_argument("--utterances", type=int, default=5)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=100)
    ap.add_argument("--long-repeat", type=int, default=1, help="the long text's paragraph, this many times (0: none)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    results = asyncio.run(main_async(args))
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    commit = os.environ.get("COMMIT") or subprocess.run(  # $COMMIT first: a device copy's git is not the tree's
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip() or "unknown"
    report = dict(card=card, date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), commit=commit,
                  model_dir=args.model_dir or "random (benchmark_checkpoint)", utterances=args.utterances,
                  streams=args.streams, results=results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "startup_cost.json").write_text(json.dumps(report, indent=1) + "\n")
    rows = ["| variant | start-up s | checks s | first audio p50/p95 ms (1 at a time) | "
            f"first audio p50/p95 ms ({args.streams} at once) | fall-backs |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        one, many = r["one_at_a_time"], r[f"{args.streams}_at_once"]
        rows.append(f"| {name} | {r['startup_s']} | {r['checks_s']} | {one['p50_ms']}/{one['p95_ms']} | "
                    f"{many['p50_ms']}/{many['p95_ms']} | {r['fallbacks'] or 'none'} |")
    rows += ["", "Long text (split into utterances, played from the first chunk): "
             + "; ".join(f"{name}: {r['long_text']}" for name, r in results.items())]
    wm = results["checks+watermark"].get("watermark", {})
    md = [f"# Start-up checks and watermark: cost", "", f"{card}, {report['date']}, commit {commit}, checkpoint "
          f"{report['model_dir']}.", "", *rows, "", f"Watermark: {json.dumps(wm)}"]
    (out / "startup_cost.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
