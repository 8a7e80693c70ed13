"""How long a batched T3 prefill (admission) takes on the GPU: captured (CUDA graph) vs eager.

    python benchmarks/prefill_probe.py [--model-dir DIR] [--out benchmarks/results]

Times ``T3Runner.admit_many`` for batches of 1, 8, 32 texts (~30-40 tokens) with the
prefill graphs (``capture_all(prefix)``) and eagerly, same weights, same run, and checks
that both give the same logits. Writes prefill_probe.json / .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.chatterbox.checkpoint import load_checkpoint  # noqa: E402
from engine.chatterbox.random_checkpoint import benchmark_checkpoint, benchmark_texts  # noqa: E402
from engine.chatterbox.t3_runner import T3Runner  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="/tmp/chatterbox-random")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    ckpt = load_checkpoint(benchmark_checkpoint(a.model_dir), "cuda")
    card = torch.cuda.get_device_name()
    texts = benchmark_texts(32)
    rows = []
    logits = {}
    for name, graphs in (("graphs", True), ("eager", False)):
        r = T3Runner(ckpt.t3, "cuda", torch.bfloat16, max_slots=64, max_len=1024, cuda_graphs=graphs)
        prefix = r.voice_prefix(ckpt.conds.t3)
        t0 = time.perf_counter()
        r.capture_all(prefix)
        capture_s = time.perf_counter() - t0
        for b in (1, 8, 32):
            r.admit_many(list(range(b)), prefix, texts[:b])  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                _, lg = r.admit_many(list(range(b)), prefix, texts[:b])
            torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) / 10 * 1e3
            logits[(name, b)] = lg.float().clone()
            rows.append(dict(path=name, batch=b, ms=round(ms, 2), capture_s=round(capture_s, 1)))
            print(rows[-1], flush=True)
        del r
        torch.cuda.empty_cache()
    diff = {b: float((logits[("graphs", b)] - logits[("eager", b)]).abs().max()) for b in (1, 8, 32)}
    print("max |logits graphs - eager|:", diff, flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefill_probe.json").write_text(json.dumps(dict(card=card, rows=rows, max_logit_diff=diff), indent=1))
    md = [f"# T3 prefill (admission): CUDA graphs vs eager ({card})", "", "`python benchmarks/prefill_probe.py`", "",
          "| batch | graphs ms | eager ms |", "|---|---|---|"]
    for b in (1, 8, 32):
        g, e = (next(x["ms"] for x in rows if x["path"] == p and x["batch"] == b) for p in ("graphs", "eager"))
        md.append(f"| {b} | {g} | {e} |")
    md += ["", "Max |logits, graphs - eager|: " + ", ".join(f"batch {b}: {v:.2e}" for b, v in diff.items())]
    (out / "prefill_probe.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
