"""How long a batched T3 prefill (admission) takes on the GPU, and where the time goes.

    python benchmarks/prefill_probe.py [--model-dir DIR]

Prints the wall time of ``T3Runner.admit_many`` for batches of 1, 4, 16 texts (~40 tokens)
and the top CUDA/CPU ops of one batch of 8 (torch.profiler).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.chatterbox.checkpoint import load_checkpoint  # noqa: E402
from engine.chatterbox.random_checkpoint import write_random_checkpoint  # noqa: E402
from engine.chatterbox.t3_runner import T3Runner  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default="/tmp/chatterbox-random")
    a = ap.parse_args()
    if not Path(a.model_dir, "conds.pt").exists():
        write_random_checkpoint(a.model_dir, 24, 1024, seed=0, block_stop=True)
    ckpt = load_checkpoint(a.model_dir, "cuda")
    r = T3Runner(ckpt.t3, "cuda", torch.bfloat16, max_slots=64, max_len=1024)
    prefix = r.voice_prefix(ckpt.conds.t3)
    texts = [torch.randint(0, 50000, (40 + i % 7,)) for i in range(16)]
    for b in (1, 4, 16, 1, 4, 16):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        r.admit_many(list(range(b)), prefix, texts[:b])
        torch.cuda.synchronize()
        print(f"admit_many b={b}: {(time.perf_counter() - t0) * 1e3:.1f} ms", flush=True)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        r.admit_many(list(range(8)), prefix, texts[:8])
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
