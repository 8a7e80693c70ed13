"""The watermark inside the engine: first audio with each way of marking, on one engine.

    python benchmarks/watermark_engine.py [--device cuda] [--out DIR]

One ``ChatterboxEngine`` (random full-size checkpoint, start-up checks off) is started once; its
marker is then swapped between variants, and for each: first audio (submit -> first chunk) of
utterances one at a time and ``--streams`` at once (startup_cost.first_audio). Variants: no
watermark; the BatchMarker as the engine builds it; without its own CUDA stream; without the
linger; one chunk per pass (max_batch 1, no linger: marking as before batching, on one thread);
the BatchMarker with the interpreter's switch interval at 0.5 ms (GIL hand-overs between the
GPU worker and the marker thread).

Writes watermark_engine.json and .md (card, date, commit from $COMMIT).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine.chatterbox.engine import ChatterboxEngine, ChatterboxOptions  # noqa: E402
from engine.chatterbox.random_checkpoint import benchmark_checkpoint  # noqa: E402
from engine.watermark import BatchMarker  # noqa: E402
from engine_bench import run_header, write_results  # noqa: E402
from startup_cost import first_audio  # noqa: E402

VARIANTS = {  # name: (BatchMarker arguments or None for no watermark, switch interval s or None)
    "none": (None, None),
    "batch (default)": ({}, None),
    "batch, default stream": (dict(own_stream=False), None),
    "batch, no linger": (dict(linger=0.0), None),
    "one chunk per pass": (dict(linger=0.0, max_batch=1, own_stream=False), None),
    "batch, switch interval 0.5 ms": ({}, 0.0005),
}


async def main_async(a: argparse.Namespace) -> list[dict]:
    model_dir = a.model_dir or str(benchmark_checkpoint("/tmp/chatterbox-random"))
    dtype = "bfloat16" if a.device.startswith("cuda") else "float32"
    engine = ChatterboxEngine(ChatterboxOptions(model_dir, device=a.device, dtype=dtype, max_streams=max(8, a.streams),
                                                max_tokens=100, startup_checks=False, watermark=True))
    await engine.start()
    wm = engine._watermarker
    rows = []
    switch = sys.getswitchinterval()
    for name, (kwargs, interval) in VARIANTS.items():
        if engine._marker is not None:
            engine._marker.close()
        engine._marker = None if kwargs is None else BatchMarker(wm, **kwargs)
        sys.setswitchinterval(interval or switch)
        await first_audio(engine, 2, 1)  # warm-up (the marker thread's stream and cuDNN plans)
        one, _ = await first_audio(engine, a.utterances, 1)
        many, _ = await first_audio(engine, a.streams, a.streams)
        marker = engine._marker
        rows.append(dict(variant=name, one_at_a_time=one, at_once=many,
                         passes=marker.batches if marker else 0, chunks=marker.marked if marker else 0))
        print(json.dumps(rows[-1]), flush=True)
    sys.setswitchinterval(switch)
    await engine.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model-dir", help="default: the benchmarks' random full-size checkpoint")
    ap.add_argument("--utterances", type=int, default=8, help="one at a time")
    ap.add_argument("--streams", type=int, default=16, help="at once")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    rows = asyncio.run(main_async(a))
    card = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    result = dict(**run_header(card), streams=a.streams, rows=rows)
    head = (f"# Watermark in the engine: first audio by way of marking ({card}, {result['date']}, "
            f"commit {result['commit'] or '?'})\n\n`python benchmarks/watermark_engine.py`: one engine, its marker "
            f"swapped per variant; first audio = submit -> first chunk.\n\n| variant | one at a time p50 / p95 ms | "
            f"{a.streams} at once p50 / p95 ms | marking passes / chunks |\n|---|---|---|---|\n")
    body = "".join(f"| {r['variant']} | {r['one_at_a_time']['p50_ms']} / {r['one_at_a_time']['p95_ms']} | "
                   f"{r['at_once']['p50_ms']} / {r['at_once']['p95_ms']} | {r['passes']} / {r['chunks']} |\n"
                   for r in rows)
    write_results(a.out, "watermark_engine", result, head + body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
