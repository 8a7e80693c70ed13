"""The first burst after start-up against later ones, inside one Chatterbox engine (no server).

    python benchmarks/first_burst.py [--device cuda] [--streams 32] [--bursts 3]

Engine run 48 (engine_notes.md): through the server, the first burst of 32 API streams after
start-up had its first audio at 333 ms, the second at 116 ms. Here the engine is built as the
server builds it (``ChatterboxEngine``, random full-size weights unless --model-dir, watermark
off as api_load --no-watermark) and, like api_load, each burst is one short stream then
``--streams`` at once through ``engine.stream``. Per burst: first audio p50/max, where each
request's first audio went (lobby + prefill, T3 to its first window, S3Gen queue + batch,
delivery to the stream), the worker's longest turn, the longest call of each scheduler step
kind (admission, T3 step, S3Gen launch, collect) and the caching allocator's new segments.
Run 49 (H200): 119.5 ms first, 115.3 ms second, no step longer in the first: the engine has no
first-burst cost; api_load's was another server's start-up work on the same GPU.

Writes first_burst[_TAG].json and .md under --out (card, date, commit from $COMMIT).
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

TEXT = "Thank you for calling. Your appointment is confirmed for Tuesday at nine in the morning."  # api_load's
STEPS = ("_take_inbox", "_admit", "_t3_step", "_launch", "_collect")


def instrument(sched) -> tuple[dict, list]:  # type: ignore[no-untyped-def]
    """Wrap the worker's step kinds (longest call and total per kind) and record submitted requests."""
    longest: dict[str, list[float]] = {name: [0.0, 0.0, 0] for name in STEPS}
    reqs: list = []
    for name in STEPS:
        fn = getattr(sched, name)

        def timed(*args, _fn=fn, _name=name, **kw):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return _fn(*args, **kw)
            finally:
                dt = time.perf_counter() - t0
                row = longest[_name]
                row[0], row[1], row[2] = max(row[0], dt), row[1] + dt, row[2] + 1
        setattr(sched, name, timed)
    submit = sched.submit

    def recorded(req):  # type: ignore[no-untyped-def]
        reqs.append(req)
        submit(req)
    sched.submit = recorded
    return longest, reqs


def ms(x: float) -> float:
    return round(x * 1e3, 1)


async def burst(engine, n: int, longest: dict, reqs: list) -> dict:  # type: ignore[no-untyped-def]
    sched = engine._scheduler
    t0 = time.perf_counter()
    single = None
    async for _ in engine.stream("Warm up.", VoiceSpec()):  # as api_load: one stream first (a lone caller)
        single = single or time.perf_counter() - t0
    for row in longest.values():
        row[:] = [0.0, 0.0, 0]
    reqs.clear()
    sched.stats.turn_max_s = 0.0
    cuda = torch.cuda.is_available() and engine.options.device.startswith("cuda")
    segs0 = torch.cuda.memory_stats().get("num_device_alloc", 0) if cuda else 0

    async def one() -> tuple[float, float]:
        t0 = time.perf_counter()
        first = None
        stream = engine.stream(TEXT, VoiceSpec())
        try:
            async for _ in stream:
                first = first or time.perf_counter()
                break
        finally:
            await stream.aclose()
        return t0, first or float("nan")

    t0 = time.perf_counter()
    times = await asyncio.gather(*(one() for _ in range(n)))
    await asyncio.sleep(0.3)  # closed streams dropped
    firsts = [f - s for s, f in times]
    mine = [r for r in reqs if r.first_audio is not None]

    def parts(a: str, b: str) -> float:
        vals = [getattr(r, b) - getattr(r, a) for r in mine if getattr(r, a) and getattr(r, b)]
        return ms(float(np.percentile(vals, 50))) if vals else float("nan")
    return dict(
        streams=n, wall_ms=ms(time.perf_counter() - t0), single_first_ms=ms(single or float("nan")),
        first_audio_ms=dict(p50=ms(float(np.percentile(firsts, 50))), max=ms(max(firsts))),
        submit_spread_ms=ms(max(r.submitted for r in reqs) - min(r.submitted for r in reqs)) if reqs else None,
        lobby_prefill_ms=parts("submitted", "admitted_at"), t3_to_window_ms=parts("admitted_at", "first_window_at"),
        s3gen_ms=parts("first_window_at", "first_audio"), requests=len(mine),
        turn_max_ms=ms(sched.stats.turn_max_s),
        steps={k: dict(longest_ms=ms(v[0]), total_ms=ms(v[1]), calls=v[2]) for k, v in longest.items()},
        new_segments=(torch.cuda.memory_stats().get("num_device_alloc", 0) - segs0) if cuda else 0,
        late_captures=late_captures(sched))


def late_captures(sched) -> dict:  # type: ignore[no-untyped-def]
    out = {"t3": getattr(sched.runner, "late_captures", 0)}
    for kind in ("graphs", "encoder_graphs", "vocoder_graphs"):
        g = getattr(sched.streamer, kind, None)
        if g is not None:
            out[kind] = g.late_captures
    return out


async def run(a: argparse.Namespace) -> dict:
    from engine.chatterbox.engine import ChatterboxEngine, ChatterboxOptions

    opts = dict(device=a.device, dtype=a.dtype, max_streams=a.max_streams, max_tokens=a.max_tokens,
                watermark=False, startup_checks=not a.no_checks)
    if a.max_len:
        opts["max_len"] = a.max_len
    t0 = time.perf_counter()
    engine = ChatterboxEngine(ChatterboxOptions(a.model_dir, **opts))
    await engine.start()
    started = time.perf_counter() - t0
    longest, reqs = instrument(engine._scheduler)
    rows = []
    for i in range(a.bursts):
        rows.append(await burst(engine, a.streams, longest, reqs))
        r = rows[-1]
        print(f"burst {i + 1}: one alone: first audio {r['single_first_ms']} ms; {a.streams} at once: first audio "
              f"p50/max {r['first_audio_ms']['p50']}/{r['first_audio_ms']['max']} ms; "
              f"lobby+prefill {r['lobby_prefill_ms']}, T3 {r['t3_to_window_ms']}, S3Gen {r['s3gen_ms']} ms (p50); "
              f"longest turn {r['turn_max_ms']} ms; steps "
              + ", ".join(f"{k} {v['longest_ms']}/{v['total_ms']} ms x{v['calls']}" for k, v in r["steps"].items())
              + f"; new segments {r['new_segments']}; late captures {r['late_captures']}", flush=True)
    await engine.close()
    return dict(start_up_s=round(started, 2), checks_s=round(engine.checks_seconds, 2), bursts=rows)


def render(r: dict) -> str:
    lines = [f"# First burst after start-up ({r['gpu']}, {r['date']}, commit {r['commit']})", "",
             f"Command: `{r['command']}`. Start-up {r['start_up_s']} s (checks {r['checks_s']} s).", "",
             "| burst | 1 alone: first audio ms | N at once: first audio p50 / max ms | lobby+prefill / T3 / S3Gen "
             "p50 ms | longest turn ms | longest admission / T3 step / launch / collect ms | new segments |",
             "|---|---|---|---|---|---|---|"]
    for i, b in enumerate(r["bursts"]):
        s = b["steps"]
        lines.append(f"| {i + 1} | {b.get('single_first_ms')} | {b['first_audio_ms']['p50']} / "
                     f"{b['first_audio_ms']['max']} | "
                     f"{b['lobby_prefill_ms']} / {b['t3_to_window_ms']} / {b['s3gen_ms']} | {b['turn_max_ms']} | "
                     f"{s['_admit']['longest_ms']} / {s['_t3_step']['longest_ms']} / {s['_launch']['longest_ms']} / "
                     f"{s['_collect']['longest_ms']} | {b['new_segments']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="T3/flow precision (default: bfloat16 on a GPU, float32 on a CPU)")
    ap.add_argument("--model-dir", default="/tmp/chatterbox-random", help="random full-size weights if empty")
    ap.add_argument("--t3-layers", type=int, default=24)
    ap.add_argument("--t3-width", type=int, default=1024)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--bursts", type=int, default=3)
    ap.add_argument("--max-streams", type=int, default=128, help="slots (api_load: its largest level)")
    ap.add_argument("--max-tokens", type=int, default=150, help="as api_load")
    ap.add_argument("--max-len", type=int, default=0, help="positions per slot (0: the engine's)")
    ap.add_argument("--no-checks", action="store_true", help="no start-up checks (a quicker CPU run)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    a.dtype = a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32")
    from engine.chatterbox.random_checkpoint import benchmark_checkpoint

    benchmark_checkpoint(a.model_dir, a.t3_layers, a.t3_width)
    r = asyncio.run(run(a))
    r.update(gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU",
             date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             commit=os.environ.get("COMMIT") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                               capture_output=True, text=True).stdout.strip(),
             command=" ".join(["python"] + sys.argv))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "first_burst" + (f"_{a.tag}" if a.tag else "")
    (out / f"{name}.json").write_text(json.dumps(r, indent=1) + "\n")
    (out / f"{name}.md").write_text(render(r))
    print(render(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
