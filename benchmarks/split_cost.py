"""What a burst of N requests costs the Chatterbox engine's event loop before the last one is submitted.

Run 47 (engine_notes.md): ``ChatterboxEngine.stream`` splits a text over the budget
(``pieces``) on the engine process's loop, one request after another. With api_load's
``--max-tokens 150`` (budget 18) its text is split in two, and the split counted tokens
26 times through ``tokenize``; ``count_tokens`` counts with the Rust tokenizer. This times,
for N requests back to back, 87785a1's work (one ``tokenize``), 33f6620's (``pieces`` with
``tokenize`` as the counter, then ``tokenize`` of the first piece) and now's (the split
counted with ``count_tokens``, or for a text split before, ``pieces``' cache), beside a thread standing in for the GPU worker (2.5 ms waits, GIL
released, then a little Python), whose wake-up delays are summed. CPU only; no model weights
(the random checkpoint's tokenizer, or ``--model-dir``'s).

    python benchmarks/split_cost.py --tag h200   # writes benchmarks/results/split_cost_<tag>.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.chatterbox.engine import ChatterboxEngine, ChatterboxOptions  # noqa: E402
from engine.chatterbox.text import check_text, split_text  # noqa: E402

TEXT = "Thank you for calling. Your appointment is confirmed for Tuesday at nine in the morning."  # api_load's


def burst(n: int, work: Callable[[], object]) -> tuple[float, float]:
    """(ms the loop is busy with n requests' work, ms the stand-in worker's wake-ups were late in all)."""
    stop = threading.Event()
    late: list[float] = []

    def worker() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            time.sleep(0.0025)
            late.append(time.perf_counter() - t0 - 0.0025)
            sum(range(300))

    th = threading.Thread(target=worker)
    th.start()
    time.sleep(0.05)
    late.clear()
    t0 = time.perf_counter()
    for _ in range(n):
        work()
    busy = time.perf_counter() - t0
    stop.set()
    th.join()
    return busy * 1e3, sum(late) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", help="a checkpoint whose tokenizer to use (default: the random checkpoint's)")
    ap.add_argument("--budget", type=int, default=150 // 8, help="text tokens per utterance (api_load: 150 // 8)")
    ap.add_argument("--bursts", default="1,32,128")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args()
    from transformers import AutoTokenizer

    if a.model_dir:
        root = Path(a.model_dir)
    else:
        from engine.chatterbox.random_checkpoint import write_tokenizer

        root = Path(tempfile.mkdtemp())
        write_tokenizer(root)
    engine = ChatterboxEngine(ChatterboxOptions(model_dir=str(root), text_budget=a.budget))
    engine._ckpt = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(str(root)))  # the tokenizer is all it uses
    old_count = lambda s: int(engine.tokenize(s).numel())  # noqa: E731  (33f6620's counter)
    pieces = engine.pieces(TEXT)
    assert pieces == split_text(check_text(TEXT), old_count, a.budget)
    work = {"87785a1: tokenize": lambda: engine.tokenize(TEXT),
            "33f6620: pieces via tokenize": lambda: engine.tokenize(
                split_text(check_text(TEXT), old_count, a.budget)[0]),
            "now, a new text each time: count_tokens": lambda: engine.tokenize(
                split_text(check_text(TEXT), engine.count_tokens, a.budget)[0]),
            "now, the same text: pieces cached": lambda: engine.tokenize(engine.pieces(TEXT)[0])}
    table: dict[int, dict[str, dict[str, float]]] = {}
    for n in (int(x) for x in a.bursts.split(",")):
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in work}
        for _ in range(a.rounds):
            for name, fn in work.items():
                samples[name].append(burst(n, fn))
        table[n] = {name: {"loop_busy_ms": statistics.median(b for b, _ in v),
                           "worker_late_ms": statistics.median(w for _, w in v)} for name, v in samples.items()}
        print(n, json.dumps(table[n]), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
            "command": "python " + " ".join(sys.argv), "budget": a.budget, "pieces": pieces,
            "tokenizer": str(a.model_dir or "random checkpoint's")}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"split_cost_{a.tag}" if a.tag else "split_cost"
    (out / f"{name}.json").write_text(json.dumps({**meta, "bursts": table}, indent=1) + "\n")
    names = list(work)
    lines = [f"# Engine loop work for a burst of requests (median of {a.rounds} interleaved rounds)", "",
             f"{meta['date']}, commit {commit}; `{meta['command']}`; budget {a.budget}: {pieces}", "",
             "| requests | " + " | ".join(f"{n}: loop busy / worker late ms" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    lines += [f"| {n} | " + " | ".join(f"{v[k]['loop_busy_ms']:.1f} / {v[k]['worker_late_ms']:.1f}" for k in names)
              + " |" for n, v in table.items()]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / name}.json and .md")


if __name__ == "__main__":
    main()
