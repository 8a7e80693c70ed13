"""T3's sampling step alone, three ways, at the decode batch sizes: what each costs per step.

Run 47 (engine_notes.md): first audio under a burst of 32 simultaneous requests went from
103 to 200 ms between 87785a1 and 33f6620. The T3 sampler changed between them:

* ``87785a1``: one setting for all rows: ``torch.topk`` for top-k, one sort for top-p, torch's
  generator for the Exp(1) noise (``old_chain`` below, copied from that commit);
* ``33f6620``: per-row settings: two full sorts of [rows, 6,561] (top-k's k-th value, then
  top-p), and counter-based noise (``seeded_exponential``: an int64 hash and a float64 log);
* now: per-row settings with one sort (``t3_runner.filter_rows``), the same noise.

Each is timed as the engine runs it: on CUDA, captured in a CUDA graph and replayed (the
decode step's graph holds the sampler); on CPU, eager. Variants are interleaved, several
rounds, median per variant. Writes ``benchmarks/results/sampling_step_<tag>.json`` and ``.md``.

    python benchmarks/sampling_step.py --tag h200          # on the GPU machine
    python benchmarks/sampling_step.py --device cpu --tag cpu --rows 32,128 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.chatterbox.t3_runner import filter_rows, seeded_exponential  # noqa: E402

VOCAB = 6561  # T3 Turbo's speech vocabulary (the sampler's row length)


def old_chain(logits: torch.Tensor, seen: torch.Tensor, temperature: float, top_k: int, top_p: float,
              penalty: float) -> torch.Tensor:
    """87785a1's ``sample_tokens``: one setting for every row, topk + one sort, torch's generator."""
    x = logits.float() / temperature
    kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
    x = x.masked_fill(x < kth, float("-inf"))
    sorted_x, order = torch.sort(x, dim=-1, descending=False)
    remove = sorted_x.softmax(dim=-1).cumsum(dim=-1) <= (1.0 - top_p)
    remove[:, -1] = False
    x = x.scatter(1, order, sorted_x.masked_fill(remove, float("-inf")))
    x = torch.where(seen, torch.where(x < 0, x * penalty, x / penalty), x)
    return torch.argmax(x.softmax(dim=-1) / torch.empty_like(x).exponential_(), dim=-1)


def two_sort_chain(logits: torch.Tensor, seen: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                   top_p: torch.Tensor, penalty: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """33f6620's ``sample_rows``: per-row settings, a descending sort for top-k, another for top-p."""
    x = logits.float() / temperature[:, None]
    v = x.size(-1)
    kth = torch.sort(x, dim=-1, descending=True).values.gather(1, (top_k.clamp(1, v) - 1)[:, None])
    x = x.masked_fill(x < kth, float("-inf"))
    sorted_x, order = torch.sort(x, dim=-1, descending=False)
    remove = (sorted_x.softmax(-1).cumsum(-1) <= (1.0 - top_p)[:, None]) & (top_p < 1.0)[:, None]
    remove[:, -1] = False
    x = x.scatter(1, order, sorted_x.masked_fill(remove, float("-inf")))
    x = torch.where(seen, torch.where(x < 0, x * penalty[:, None], x / penalty[:, None]), x)
    return torch.argmax(x.softmax(dim=-1) / noise, dim=-1)


def variants(rows: int, device: torch.device) -> dict[str, Callable[[], torch.Tensor]]:
    """Each variant as a closure over static inputs (the engine's defaults: 0.8, 1000, 0.95, 1.2)."""
    gen = torch.Generator(device="cpu").manual_seed(rows)
    logits = (torch.randn(rows, VOCAB, generator=gen) * 3).to(device)
    seen = (torch.rand(rows, VOCAB, generator=gen) < 0.01).to(device)

    def full(value: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.full((rows,), value, dtype=dtype, device=device)

    temperature, top_k, top_p, penalty = full(0.8), full(1000, torch.long), full(0.95), full(1.2)
    seeds = torch.arange(rows, device=device)
    counters = full(500, torch.long)

    def main_step() -> torch.Tensor:
        return two_sort_chain(logits, seen, temperature, top_k, top_p, penalty,
                              seeded_exponential(seeds, counters, VOCAB))

    def new_step() -> torch.Tensor:
        x = filter_rows(logits, seen, temperature, top_k, top_p, penalty)
        return torch.argmax(x.softmax(dim=-1) / seeded_exponential(seeds, counters, VOCAB), dim=-1)

    return {"87785a1 (topk + sort, torch noise)": lambda: old_chain(logits, seen, 0.8, 1000, 0.95, 1.2),
            "33f6620 (two sorts, seeded noise)": main_step,
            "now (one sort, seeded noise)": new_step,
            "seeded noise alone": lambda: seeded_exponential(seeds, counters, VOCAB),
            "one sort alone": lambda: torch.sort(logits, dim=-1, stable=True).values}


def timer(fn: Callable[[], torch.Tensor], device: torch.device) -> Callable[[int], float]:
    """ms per call over n calls: a CUDA graph's replays on CUDA, eager calls on CPU."""
    if device.type == "cuda":
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()

        def run(n: int) -> float:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                graph.replay()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / n
        return run

    def run_cpu(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n * 1e3
    return run_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rows", default="1,32,64,128,256", help="decode batch sizes")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median reported)")
    ap.add_argument("--calls", type=int, default=0, help="calls per round (0: 200 on CUDA, 10 on CPU)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args()
    device = torch.device(a.device)
    calls = a.calls or (200 if device.type == "cuda" else 10)
    if device.type == "cpu":
        torch.set_num_threads(1)
    table: dict[int, dict[str, float]] = {}
    for rows in (int(r) for r in a.rows.split(",")):
        with torch.inference_mode():
            runs = {name: timer(fn, device) for name, fn in variants(rows, device).items()}
            samples: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(a.rounds):
                for name, run in runs.items():
                    samples[name].append(run(calls))
        table[rows] = {name: statistics.median(v) for name, v in samples.items()}
        print(rows, {k: round(v, 4) for k, v in table[rows].items()}, flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (1 thread)"
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit, "card": card,
            "torch": torch.__version__, "command": "python " + " ".join(sys.argv), "vocab": VOCAB,
            "rounds": a.rounds, "calls_per_round": calls,
            "how": "CUDA graph replays" if device.type == "cuda" else "eager calls"}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"sampling_step_{a.tag}" if a.tag else "sampling_step"
    (out / f"{name}.json").write_text(json.dumps({**meta, "ms_per_step": table}, indent=1) + "\n")
    names = list(next(iter(table.values())))
    lines = [f"# T3 sampling step, ms per step ({meta['how']}, median of {a.rounds} interleaved rounds)", "",
             f"{meta['date']}, commit {commit}, {card}, torch {torch.__version__}; `{meta['command']}`", "",
             "| rows | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {rows} | " + " | ".join(f"{v[n]:.4f}" for n in names) + " |" for rows, v in table.items()]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / name}.json and .md")


if __name__ == "__main__":
    main()
