"""One T3 decode step (CUDA graph): the Triton decode kernel against SDPA, same run.

    python benchmarks/t3_step.py [--model-dir DIR] [--out benchmarks/results]

Slots are admitted with one voice and their positions spread as in a busy engine
(each slot somewhere between its prefill and the cache bucket's end), so SDPA reads
every slot up to the bucket while the kernel reads each slot's own length and the
voice prefix once. Timed at batches 1, 32, 128 and cache buckets 512-1024. Then the
logits of one eager step from the same state, kernel vs SDPA, bfloat16 and float32
(they must agree to rounding). Writes t3_step.json / t3_step.md.
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

from engine.chatterbox import decode_attention  # noqa: E402
from engine.chatterbox.checkpoint import load_checkpoint  # noqa: E402
from engine.chatterbox.random_checkpoint import benchmark_checkpoint, benchmark_texts  # noqa: E402
from engine.chatterbox.t3_runner import SamplingParams, T3Runner  # noqa: E402


def timed(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="/tmp/chatterbox-random")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    ckpt = load_checkpoint(benchmark_checkpoint(a.model_dir), "cuda")
    card = torch.cuda.get_device_name()
    texts = benchmark_texts(128)
    gen = torch.Generator().manual_seed(0)
    rows = []
    decode_attention.MIN_SLOTS = 1  # time the kernel at every batch (the engine uses it from 32 slots)
    r = T3Runner(ckpt.t3, "cuda", torch.bfloat16, max_slots=128, max_len=1024)
    prefix = r.voice_prefix(ckpt.conds.t3)
    for s0 in range(0, 128, 32):
        r.admit_many(list(range(s0, s0 + 32)), prefix, texts[s0:s0 + 32])
    start = list(r.host_pos)
    print(f"card {card}; voice prefix {prefix.length} positions", flush=True)
    for keys in (512, 768, 1024):
        for b in (1, 32, 128):
            # positions spread between each slot's prefill end and the bucket's end, the last at its end
            pos = [int(start[s] + torch.randint(0, keys - 8 - start[s], (1,), generator=gen)) for s in range(b)]
            pos[-1] = keys - 8
            row = dict(batch=b, keys=keys, mean_position=round(sum(pos) / b))
            for name, on in (("sdpa_ms", False), ("kernel_ms", True)):
                decode_attention.fused = on
                r._graphs.clear()  # graphs are captured with the attention in force

                def one() -> None:
                    r.positions[:b] = torch.tensor(pos, device="cuda")  # stay at these lengths
                    r.host_pos[:b] = pos
                    r.step(b)
                row[name] = round(timed(one, 30), 3)
            row["speedup"] = round(row["sdpa_ms"] / row["kernel_ms"], 2)
            rows.append(row)
            print(row, flush=True)
    decode_attention.fused = True
    r = None  # (frees the cache before the precision runners)
    torch.cuda.empty_cache()
    errors = {}
    for dname, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        logits = {}
        for on in (False, True):
            decode_attention.fused = on
            rr = T3Runner(ckpt.t3, "cuda", dtype, max_slots=32, max_len=1024,
                          sampling=SamplingParams(1.0, 1, 1.0, 1.0), cuda_graphs=False)
            rr.admit_many(list(range(32)), rr.voice_prefix(ckpt.conds.t3), texts[:32])
            rr.step(32)
            logits[on] = rr.last_logits.float()
            del rr
        ref = logits[False]
        errors[dname] = float((logits[True] - ref).norm() / ref.norm())
    # two voices (16 slots each): no shared prefix, each slot reads its own row from position 0
    import dataclasses
    other = dataclasses.replace(ckpt.conds.t3, speaker_emb=ckpt.conds.t3.speaker_emb.flip(-1))
    logits = {}
    for on in (False, True):
        decode_attention.fused = on
        rr = T3Runner(ckpt.t3, "cuda", torch.bfloat16, max_slots=32, max_len=1024,
                      sampling=SamplingParams(1.0, 1, 1.0, 1.0), cuda_graphs=False)
        rr.admit_many(list(range(16)), rr.voice_prefix(ckpt.conds.t3), texts[:16])
        rr.admit_many(list(range(16, 32)), rr.voice_prefix(other), texts[16:32])
        assert rr._shared_for(32, rr._keys_for(32)) == 0
        rr.step(32)
        logits[on] = rr.last_logits.float()
        del rr
    errors["bfloat16_two_voices"] = float((logits[True] - logits[False]).norm() / logits[False].norm())
    decode_attention.fused = True
    print("logits, kernel vs SDPA (relative):", errors, flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "t3_step.json").write_text(json.dumps(dict(card=card, prefix=prefix.length, rows=rows,
                                                      logit_rel_err_kernel_vs_sdpa=errors), indent=1))
    md = [f"# T3 decode step: Triton decode kernel vs SDPA ({card})", "",
          f"Voice prefix {prefix.length} positions; slots' positions spread up to the cache bucket. "
          "CUDA graphs, bfloat16. `python benchmarks/t3_step.py`", "",
          "| batch | cache bucket | mean position | SDPA ms | kernel ms | speed-up |", "|---|---|---|---|---|---|"]
    md += [f"| {x['batch']} | {x['keys']} | {x['mean_position']} | {x['sdpa_ms']} | {x['kernel_ms']} | {x['speedup']} |"
           for x in rows]
    md += ["", "Logits of one step from the same state, kernel vs SDPA (relative error): " +
           ", ".join(f"{k} {v:.2e}" for k, v in errors.items())]
    (out / "t3_step.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
