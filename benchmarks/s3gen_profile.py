"""Where an S3Gen window batch spends the GPU's time: kernels per phase, and vocoder variants.

    python benchmarks/s3gen_profile.py [--model-dir DIR] [--batch 32]

A batch of ``--batch`` second windows (50 new + 25 context tokens each, as in
s3gen_graphs.py) runs eagerly under torch.profiler; the CUDA kernels are summed
per phase (encoder, estimator, vocoder) and the largest are listed, so the next
optimisation is chosen from measurements, not guesses. Then the vocoder alone is
timed on the same mel in variants, each against the float32 default in the same
run (time ratio and audio SNR): the stock Snake arithmetic against the fused
kernel (``engine/chatterbox/snake.py``), cuDNN autotuning (``cudnn.benchmark``)
and bfloat16. Writes benchmarks/results/s3gen_profile.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from engine.chatterbox.checkpoint import load_checkpoint  # noqa: E402
from engine.chatterbox.random_checkpoint import benchmark_checkpoint  # noqa: E402
from engine.chatterbox.s3gen_streamer import FlowJob, S3GenStreamer  # noqa: E402
from engine.chatterbox import snake as snake_mod  # noqa: E402
from engine.chatterbox.vocoder import Vocoder  # noqa: E402


def kernel_table(prof, phases: list[str]) -> dict[str, dict]:
    """CUDA kernel time per phase: each CPU op's kernels go to the named range it runs in."""
    out: dict[str, dict] = {p: dict(total_ms=0.0, kernels=defaultdict(float), ops=defaultdict(float)) for p in phases}
    for e in prof.events():
        if not getattr(e, "kernels", None):
            continue
        parent, name = e, None
        while parent is not None:
            if parent.name in phases:
                name = parent.name
                break
            parent = parent.cpu_parent
        if name is None:
            continue
        for k in e.kernels:
            ms = k.duration / 1e3
            out[name]["total_ms"] += ms
            out[name]["kernels"][k.name[:160]] += ms
            out[name]["ops"][e.name] += ms  # the op that launched it (aten::mul, aten::cat, ...)
    for p in phases:
        for what in ("kernels", "ops"):
            top = sorted(out[p][what].items(), key=lambda kv: -kv[1])[:12]
            out[p][what] = [dict(name=k, ms=v) for k, v in top]
    return out


def time_vocoder(voc: Vocoder, ins: dict, reps: int) -> tuple[float, np.ndarray]:
    torch.set_grad_enabled(False)
    for _ in range(3):
        audio, _ = voc(**ins)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        audio, _ = voc(**ins)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3, audio.detach().float().cpu().numpy()


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    err = ref - x
    return float(10 * np.log10((ref ** 2).sum() / max((err ** 2).sum(), 1e-30)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="/tmp/chatterbox-random")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    benchmark_checkpoint(a.model_dir)
    dev = torch.device("cuda")
    ckpt = load_checkpoint(a.model_dir, "cuda")
    st = S3GenStreamer(ckpt.s3gen, dev, flow_dtype=torch.bfloat16, cuda_graphs=False, overlap=False)
    voice = st.prepare_voice(ckpt.conds.gen)
    tokens = torch.randint(0, 6561, (80,), generator=torch.Generator().manual_seed(3)).to(dev)
    b = a.batch

    def batch(profiled: bool):
        utts = [st.new_utterance(voice, 100 + i, 200) for i in range(b)]
        st.flow_batch([FlowJob(u, tokens[:13], False) for u in utts])
        st.vocode(utts, [False] * b)
        torch.cuda.synchronize()
        jobs = [FlowJob(u, tokens[:63], False) for u in utts]
        if not profiled:
            st.flow_batch(jobs)
            st.vocode(utts, [False] * b)
            return utts
        # the phases as the streamer runs them, each in a named range
        with record_function("flow"):
            st.flow_batch(jobs)
        with record_function("vocoder"):
            st.vocode(utts, [False] * b)
        torch.cuda.synchronize()
        return utts

    batch(False)
    batch(False)  # warm-up: cuDNN heuristics, allocator
    orig_encode, orig_solve = st._encode_windows, None

    def encode(voice, seqs):
        with record_function("encoder"):
            return orig_encode(voice, seqs)
    st._encode_windows = encode  # type: ignore[method-assign]
    import engine.chatterbox.s3gen_streamer as s3m
    orig_solve = s3m.solve_meanflow_cached

    def solve(*args, **kw):
        with record_function("estimator"):
            return orig_solve(*args, **kw)
    s3m.solve_meanflow_cached = solve
    snake_mod.fused = False  # the profile shows the stock arithmetic (what the fused kernel replaces)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        batch(True)
    snake_mod.fused = True
    s3m.solve_meanflow_cached = orig_solve
    st._encode_windows = orig_encode  # type: ignore[method-assign]
    phases = kernel_table(prof, ["encoder", "estimator", "vocoder"])
    for p, v in phases.items():
        print(f"{p}: {v['total_ms']:.1f} ms of kernels", flush=True)
        for k in v["ops"][:10]:
            print(f"    {k['ms']:7.2f} ms  {k['name']}", flush=True)

    # the vocoder alone on one padded batch, in variants
    frames = 128
    g = torch.Generator(device="cpu").manual_seed(1)
    mel = (torch.randn(b, 80, frames, generator=g) * 2 - 5).to(dev)
    h = st.vocoder.harmonics
    ins = dict(mel=mel, start_phase=torch.zeros(b, h, device=dev, dtype=torch.float64),
               phase0=torch.zeros(b, h, device=dev, dtype=torch.float64),
               noise_start=torch.zeros(b, device=dev, dtype=torch.long),
               keep_frame=torch.ones(b, device=dev, dtype=torch.long))
    variants = []
    snake_mod.fused = False
    base_ms, base_audio = time_vocoder(st.vocoder, ins, a.reps)
    variants.append(dict(variant="float32, stock Snake (five kernels)", ms=base_ms, ratio=1.0, snr_db=None))
    snake_mod.fused = True
    ms, audio = time_vocoder(st.vocoder, ins, a.reps)
    variants.append(dict(variant="float32, fused Snake (the default)", ms=ms, ratio=base_ms / ms,
                         snr_db=snr_db(base_audio, audio)))
    torch.backends.cudnn.benchmark = True
    ms, audio = time_vocoder(st.vocoder, ins, a.reps)
    variants.append(dict(variant="float32, cudnn.benchmark", ms=ms, ratio=base_ms / ms, snr_db=snr_db(base_audio, audio)))
    bf = S3GenStreamer(ckpt.s3gen, dev, flow_dtype=torch.bfloat16, hift_dtype=torch.bfloat16, cuda_graphs=False,
                       overlap=False)
    ms, audio = time_vocoder(bf.vocoder, ins, a.reps)
    variants.append(dict(variant="bfloat16, cudnn.benchmark", ms=ms, ratio=base_ms / ms, snr_db=snr_db(base_audio, audio)))
    torch.backends.cudnn.benchmark = False
    ms, audio = time_vocoder(bf.vocoder, ins, a.reps)
    variants.append(dict(variant="bfloat16", ms=ms, ratio=base_ms / ms, snr_db=snr_db(base_audio, audio)))
    del bf
    fp16 = S3GenStreamer(ckpt.s3gen, dev, flow_dtype=torch.bfloat16, hift_dtype=torch.float16, cuda_graphs=False,
                         overlap=False)
    ms, audio = time_vocoder(fp16.vocoder, ins, a.reps)
    variants.append(dict(variant="float16", ms=ms, ratio=base_ms / ms, snr_db=snr_db(base_audio, audio)))
    for v in variants:
        print(v, flush=True)

    result = dict(card=torch.cuda.get_device_name(dev), date=dt.date.today().isoformat(), torch=torch.__version__,
                  batch=b, phases=phases, vocoder_frames=frames, vocoder_variants=variants,
                  weights="random (real architecture)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "s3gen_profile.json").write_text(json.dumps(result, indent=1))
    lines = [f"# S3Gen window batch: where the GPU time goes ({result['card']}, {result['date']})", "",
             f"A batch of {b} second windows (50 new + 25 context tokens), eager, stock Snake arithmetic, "
             "kernels summed per phase (torch.profiler). Command: `python benchmarks/s3gen_profile.py`.", ""]
    for p, v in phases.items():
        lines += [f"## {p}: {v['total_ms']:.1f} ms of kernels", "", "| ms | launched by |", "|---|---|"]
        lines += [f"| {k['ms']:.2f} | `{k['name']}` |" for k in v["ops"]]
        lines += ["", "| ms | kernel |", "|---|---|"]
        lines += [f"| {k['ms']:.2f} | `{k['name']}` |" for k in v["kernels"]]
        lines.append("")
    lines += [f"## Vocoder alone, batch {b} x {frames} frames, variants vs the default in the same run", "",
              "| variant | ms | speed-up | audio SNR vs default |", "|---|---|---|---|"]
    lines += [f"| {v['variant']} | {v['ms']:.1f} | {v['ratio']:.2f}x | "
              f"{'-' if v['snr_db'] is None else format(v['snr_db'], '.1f') + ' dB'} |" for v in variants]
    (out / "s3gen_profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
