"""Open-loop load, the way operators size capacity: utterances arrive as a Poisson process.

    python benchmarks/open_loop.py [--device cuda] [--rates 12,20,24,28,32,36,40] [--window 12]

A closed loop of N callers (engine_bench.py) never offers more than the engine serves: a
slow answer delays the next request. Here arrivals do not wait: utterances (lengths drawn
from engine_bench.UTTERANCE_S, mean 6.6 s, speech forced to 25 tokens/s as in engine_bench)
arrive at ``rate`` per second, independently, at rising rates, one level after another
without a pause (each level's first ``--lead-in`` seconds of arrivals bring the load to
its steady state and are not counted). Sweeping stops at the first level whose utterances
underran. Per level: offered load in Erlangs (rate x mean length: streams in play on
average), first audio p50/p95/p99 (submit -> first chunk), p99 real-time factor per
utterance (submit -> last chunk over its audio's length), and the share of utterances
with any underrun (a 20 ms frame later than a listener who started at the first chunk
needs it). The table's bold row is the highest rate served cleanly (no underrun, no error).

Stock reference, same run: the stock package (``T3.inference_turbo`` + ``S3Gen.inference``)
is timed on each utterance length (engine_bench.run_stock); it serves one utterance at a
time and nothing streams, so under Poisson arrivals it is a single FIFO server with those
measured service times: first audio = wait + whole synthesis. It saturates where
rate x mean service time reaches 1 (that rate is in the results); beyond it the queue grows
without bound.

Cold burst (``--burst N``): before anything else runs on the freshly built engine (graphs
captured, as a server is at READY), N utterances of ``--burst-seconds`` arrive within one
second; then a warm-up (``warm_up``: as many utterances as slots, at once), then the same
burst again. Both bursts report underruns, first audio, the worker's longest turn and the caching
allocator's growth (two_gpus.md: the first two waves after start-up sent late packets).

``--saturate S``: then every slot busy back to back for S seconds (engine_bench's saturated
run), and the highest clean load as a share of that throughput (issue 22: >= 70%).

Writes open_loop.json and open_loop.md under --out (card, date, commit from $COMMIT).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine_bench import (  # noqa: E402
    TOKENS_PER_S, UTTERANCE_S, Track, add_engine_args, build_engine, closed_loop, gpu_memory, pct, run_stock, setup,
    start_utterance, summarise, write_results,
)


def poisson_arrivals(rate: float, seconds: float, rng: random.Random) -> list[float]:
    """Arrival offsets in [0, seconds) of a Poisson process of ``rate`` per second."""
    out, t = [], rng.expovariate(rate)
    while t < seconds:
        out.append(t)
        t += rng.expovariate(rate)
    return out


@dataclass
class Level:
    rate: float
    tracks: list[Track] = field(default_factory=list)  # measured (arrived after the lead-in)
    lead: list[Track] = field(default_factory=list)  # the lead-in's, not counted

    def done(self) -> bool:
        return all(t.done.is_set() for t in self.tracks + self.lead)

    def dirty(self) -> bool:
        return any(t.error is not None or (t.chunks and t.underruns()) for t in self.tracks)


def level_figures(level: Level, mean_s: float) -> dict:
    """One rate's figures: engine_bench.summarise plus the open-loop ones."""
    ok = [t for t in level.tracks if t.error is None and t.chunks]
    out = dict(rate=level.rate, erlangs=round(level.rate * mean_s, 1), **summarise(level.tracks))
    out["rtf_p99"] = pct([t.rtf for t in ok], 99)
    out["underrun_share"] = out["utterances_with_underrun"] / max(1, len(ok))
    out["clean"] = bool(ok) and not out["errors"] and out["utterances_with_underrun"] == 0
    return out


def wait_done(tracks: list[Track], deadline: float) -> None:
    for t in tracks:
        if not t.done.wait(max(0.0, deadline - time.perf_counter())):
            t.error = RuntimeError(f"stuck: {len(t.chunks)} chunks after {time.perf_counter() - t.submitted:.0f} s")


def sweep(sched, voice, rates: list[float], window: float, lead_in: float, rng: random.Random,
          durations: tuple[float, ...] = UTTERANCE_S, stop: bool = True) -> list[dict]:
    """Rising rates back to back; stops after the first level (once finished) that underran."""
    levels: list[Level] = []
    for rate in rates:
        if stop and any(lv.done() and lv.dirty() for lv in levels):
            break
        level = Level(rate)
        levels.append(level)
        start = time.perf_counter()
        # each level's arrival times from its own seed: the same rate gives the same arrivals in every run
        for off in poisson_arrivals(rate, lead_in + window, random.Random(round(rate * 1000))):
            time.sleep(max(0.0, start + off - time.perf_counter()))
            tr = start_utterance(sched, voice, rng.choice(durations), rng)
            (level.tracks if off >= lead_in else level.lead).append(tr)
        time.sleep(max(0.0, start + lead_in + window - time.perf_counter()))
    wait_done([t for lv in levels for t in lv.tracks + lv.lead], time.perf_counter() + max(durations) + 60)
    mean_s = float(np.mean(durations))
    out = [level_figures(lv, mean_s) for lv in levels]
    for r in out:
        print(f"  rate {r['rate']:5.1f}/s ({r['erlangs']:5.1f} E): {r['utterances']} utt, first audio p50/p95/p99 "
              f"{r['ttfa_p50']:.0f}/{r['ttfa_p95']:.0f}/{r['ttfa_p99']:.0f} ms, rtf p99 {r['rtf_p99']:.3f}, "
              f"underrun {r['utterances_with_underrun']} utt ({r['underrun_frames']} frames), "
              f"errors {r['errors']}", flush=True)
    return out


def burst(sched, voice, n: int, seconds: float, rng: random.Random, device: torch.device, tag: str) -> dict:
    """n utterances of ``seconds`` arriving within one second (a wave of calls)."""
    before = gpu_memory(device, f"before {tag}")
    sched.stats.turn_max_s = 0.0
    tracks = []
    start = time.perf_counter()
    for i in range(n):
        time.sleep(max(0.0, start + i / n - time.perf_counter()))
        tracks.append(start_utterance(sched, voice, seconds, rng))
    wait_done(tracks, time.perf_counter() + seconds + 60)
    out = dict(n=n, seconds=seconds, **summarise(tracks), turn_max_ms=round(sched.stats.turn_max_s * 1e3, 1),
               memory_before=before, memory_after=gpu_memory(device, f"after {tag}"))
    out["late_captures"] = late_captures(sched)
    print(f"  {tag} burst of {n}: first audio p50/p95 {out['ttfa_p50']:.0f}/{out['ttfa_p95']:.0f} ms, underrun "
          f"{out['utterances_with_underrun']} utt ({out['underrun_frames']} frames), longest turn "
          f"{out['turn_max_ms']} ms, graphs captured in service {out['late_captures']}", flush=True)
    return out


def warm_up(sched, voice, streams: int, tokens: int, rng: random.Random) -> float:
    """``streams`` utterances of ``tokens`` speech tokens at once, all waited for; seconds taken.

    What a server could run before READY if the first wave of calls after start-up met
    first-use costs (the allocator growing to the largest batches, eager code's first shapes).
    Run 44 (H200): a cold burst of 128 was no worse than one after this warm-up (0 underruns
    either way, longest turn 76 vs 75 ms, 12 new allocator segments), so the engine does not run it."""
    t0 = time.perf_counter()
    tracks = [start_utterance(sched, voice, tokens / TOKENS_PER_S, rng) for _ in range(streams)]
    wait_done(tracks, time.perf_counter() + 120)
    errors = [t.error for t in tracks if t.error is not None]
    if errors:
        raise RuntimeError(f"warm-up failed: {errors[0]!r}")
    return time.perf_counter() - t0


def late_captures(sched) -> dict:
    """CUDA graphs captured in service rather than at start-up, per kind (each one a long turn)."""
    st = sched.streamer
    out = {"prefill": getattr(sched.runner, "late_captures", 0)}
    for kind in ("graphs", "encoder_graphs", "vocoder_graphs"):
        g = getattr(st, kind, None)
        if g is not None:
            out[kind] = g.late_captures
    return out


def stock_service(rows: list[dict]):
    """Seconds the stock package takes for an utterance of ``sec`` s: its measured lengths
    interpolated; outside them, scaled per second of audio from the nearest."""
    xs = np.array([r["seconds"] for r in rows], dtype=float)
    ys = np.array([r["total_ms"] for r in rows], dtype=float) / 1e3
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]

    def service(sec: float) -> float:
        if sec < xs[0] or sec > xs[-1]:
            edge = 0 if sec < xs[0] else -1
            return float(ys[edge] * sec / xs[edge])
        return float(np.interp(sec, xs, ys))
    return service


def stock_queue(rows: list[dict], rate: float, durations: tuple[float, ...], seed: int = 0,
                utterances: int = 2000) -> dict:
    """The stock package as one FIFO server of its measured service times under Poisson arrivals."""
    service = stock_service(rows)
    rng = random.Random(seed)
    mean_service = float(np.mean([service(d) for d in durations]))
    t = free = 0.0
    ttfa, rtf = [], []
    for _ in range(utterances):
        t += rng.expovariate(rate)
        sec = rng.choice(durations)
        free = max(free, t) + service(sec)
        ttfa.append((free - t) * 1e3)
        rtf.append((free - t) / sec)
    return dict(rate=rate, erlangs=round(rate * float(np.mean(durations)), 2), utilisation=round(rate * mean_service, 3),
                saturated=rate * mean_service >= 1.0, ttfa_mean=float(np.mean(ttfa)), ttfa_p50=pct(ttfa, 50), ttfa_p95=pct(ttfa, 95),
                ttfa_p99=pct(ttfa, 99), rtf_p99=pct(rtf, 99))


def render_md(r: dict) -> str:
    lines = [f"# Open-loop load ({r['card']}, {r['date']}, commit {r['commit'] or '?'})", "",
             f"Weights: {r['weights']}. Command: `{r['command']}`. Poisson arrivals of utterances of "
             f"{r['durations']} s (mean {r['mean_s']:.1f} s), levels of {r['window']:.0f} s measured after "
             f"{r['lead_in']:.0f} s of lead-in, back to back; Erlangs = rate x mean length.", ""]
    ours = r["ours"]
    best = ours["max_clean_rate"]
    lines += ["| rate /s | Erlangs | utterances | first audio p50 / p95 / p99 ms | RTF p99 | utterances with an underrun |",
              "|---|---|---|---|---|---|"]
    for x in ours["levels"]:
        mark = "**" if x["rate"] == best else ""
        lines.append(f"| {mark}{x['rate']:g}{mark} | {x['erlangs']} | {x['utterances']} | {x['ttfa_p50']:.0f} / "
                     f"{x['ttfa_p95']:.0f} / {x['ttfa_p99']:.0f} | {x['rtf_p99']:.3f} | "
                     f"{x['utterances_with_underrun']} ({100 * x['underrun_share']:.1f}%)"
                     f"{' errors ' + str(len(x['errors'])) if x['errors'] else ''} |")
    lines += ["", f"Highest rate served cleanly: **{best} utterances/s** ({ours['max_clean_erlangs']} Erlangs); "
                  f"with first audio p95 <= {r['ttfa_target_ms']:.0f} ms too: {ours['max_target_rate']} utterances/s "
                  f"({ours['max_target_erlangs']} Erlangs).", ""]
    if r.get("saturated_audio_s_per_s"):
        sat = r["saturated_audio_s_per_s"]
        lines += [f"Saturated throughput, same run: {sat:.1f} audio s per s; the highest clean load is "
                  f"**{100 * ours['max_clean_erlangs'] / sat:.0f}%** of it.", ""]
    stock = r.get("stock")
    if stock:
        lines += [f"Stock package (one utterance at a time, nothing streams; FIFO of its measured service times, "
                  f"{stock['audio_s_per_gpu_s']:.2f} audio s per GPU s): saturates at "
                  f"**{stock['saturation_rate']:.3f} utterances/s ({stock['saturation_erlangs']:.2f} Erlangs)**.", "",
                  "| rate /s | Erlangs | utilisation | first audio p50 / p95 / p99 ms | RTF p99 |", "|---|---|---|---|---|"]
        for x in stock["levels"]:
            if x["saturated"]:  # the figures only say how long the simulated queue ran
                lines.append(f"| {x['rate']:g} | {x['erlangs']} | {x['utilisation']} | saturated: the queue grows "
                             "without bound | - |")
            else:
                lines.append(f"| {x['rate']:g} | {x['erlangs']} | {x['utilisation']} | {x['ttfa_p50']:.0f} / "
                             f"{x['ttfa_p95']:.0f} / {x['ttfa_p99']:.0f} | {x['rtf_p99']:.2f} |")
        lines.append("")
    for key in ("cold_burst", "warm_burst"):
        b = r.get(key)
        if b:
            m0, m1 = b["memory_before"], b["memory_after"]
            grow = f", allocator {m0.get('reserved_gib')} -> {m1.get('reserved_gib')} GiB reserved, device allocations " \
                   f"{m0.get('device_allocs')} -> {m1.get('device_allocs')}" if m0 else ""
            lines.append(f"- {key.replace('_', ' ')} ({b['n']} utterances of {b['seconds']:g} s within 1 s): first audio "
                         f"p50/p95 {b['ttfa_p50']:.0f}/{b['ttfa_p95']:.0f} ms, {b['utterances_with_underrun']} utterances "
                         f"underran ({b['underrun_frames']} frames), longest worker turn {b['turn_max_ms']} ms{grow}")
    if r.get("warm_up_s") is not None:
        lines.append(f"- warm-up between them (as many utterances as slots, at once): {r['warm_up_s']:.1f} s")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(ap)
    ap.add_argument("--rates", default="12,20,24,28,32,36,40", help="utterances per second, rising")
    ap.add_argument("--window", type=float, default=12.0, help="measured seconds of arrivals per rate")
    ap.add_argument("--lead-in", type=float, default=5.0, help="seconds of arrivals per rate before measuring")
    ap.add_argument("--durations", default=",".join(str(d) for d in UTTERANCE_S), help="utterance lengths, s")
    ap.add_argument("--stock-rates", default="0.05,0.1,0.2,0.3", help="rates for the stock queue (plus ours)")
    ap.add_argument("--burst", type=int, default=0, help="cold burst of N utterances first (0: none)")
    ap.add_argument("--burst-seconds", type=float, default=6.0)
    ap.add_argument("--warm-up", type=int, default=-1, help="warm-up utterances (-1: --max-slots on a GPU, "
                                                           "0 on a CPU)")
    ap.add_argument("--warm-up-tokens", type=int, default=100, help="speech tokens of each warm-up utterance")
    ap.add_argument("--ttfa-target-ms", type=float, default=250.0, help="first-audio p95 target (issue 22: 250)")
    ap.add_argument("--saturate", type=float, default=0.0,
                    help="then S seconds of every slot busy back to back (engine_bench.closed_loop, not real time): "
                         "the saturated throughput the clean rate is compared with (0: skip)")
    ap.add_argument("--no-stop", action="store_true", help="run every rate, underruns or not")
    a = ap.parse_args()
    device, ckpt, result = setup(a)
    durations = tuple(float(x) for x in a.durations.split(","))
    rates = [float(x) for x in a.rates.split(",")]
    rng = random.Random(0)
    result.update(command="python benchmarks/open_loop.py " + " ".join(sys.argv[1:]), durations=list(durations),
                  mean_s=float(np.mean(durations)), window=a.window, lead_in=a.lead_in)

    if not a.no_stock:
        st = run_stock(ckpt, device, sorted(set(durations)), rng)
        service = stock_service(st["rows"])
        mean_service = float(np.mean([service(d) for d in durations]))
        sat = 1.0 / mean_service
        levels = [stock_queue(st["rows"], r, durations) for r in [float(x) for x in a.stock_rates.split(",")] + rates]
        result["stock"] = dict(rows=st["rows"], audio_s_per_gpu_s=st["audio_s_per_gpu_s"], mean_service_s=mean_service,
                               saturation_rate=sat, saturation_erlangs=sat * result["mean_s"], levels=levels)
        print(f"stock: {st['audio_s_per_gpu_s']:.2f} audio s per s, saturates at {sat:.3f} utterances/s", flush=True)

    sched, voice, vocoder_dtype, _ = build_engine(a, ckpt, device)
    sched.start()
    try:
        if a.burst:
            result["cold_burst"] = burst(sched, voice, a.burst, a.burst_seconds, rng, device, "cold")
        warm = a.warm_up if a.warm_up >= 0 else (a.max_slots if device.type == "cuda" else 0)
        if warm:
            result["warm_up_s"] = warm_up(sched, voice, warm, a.warm_up_tokens, rng)
            print(f"warm-up: {warm} utterances in {result['warm_up_s']:.1f} s", flush=True)
        if a.burst:
            result["warm_burst"] = burst(sched, voice, a.burst, a.burst_seconds, rng, device, "warm")
        levels = sweep(sched, voice, rates, a.window, a.lead_in, rng, durations, stop=not a.no_stop)
        if a.saturate:
            sat = closed_loop(sched, voice, a.max_slots, a.saturate, rng, realtime=False, durations=durations)
            result["saturated_audio_s_per_s"] = sat["audio_s"] / sat["wall_s"]
            print(f"saturated ({a.max_slots} slots back to back): {result['saturated_audio_s_per_s']:.1f} audio s "
                  "per s", flush=True)
    finally:
        sched.stop()
    print(f"graphs captured in service (not at start-up): {late_captures(sched)}; longest worker turn "
          f"{sched.stats.turn_max_s * 1e3:.0f} ms", flush=True)
    clean = [x for x in levels if x["clean"]]
    target = [x for x in clean if x["ttfa_p95"] <= a.ttfa_target_ms]
    result["ttfa_target_ms"] = a.ttfa_target_ms
    result["ours"] = dict(levels=levels, max_clean_rate=max((x["rate"] for x in clean), default=0),
                          max_clean_erlangs=max((x["erlangs"] for x in clean), default=0),
                          max_target_rate=max((x["rate"] for x in target), default=0),
                          max_target_erlangs=max((x["erlangs"] for x in target), default=0),
                          dtype=a.dtype, vocoder_dtype=vocoder_dtype, overlap=a.overlap, t3_share=sched.t3_share,
                          max_slots=a.max_slots, stats=sched.stats.__dict__, late_captures=late_captures(sched))
    write_results(a.out, "open_loop", result, render_md(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
