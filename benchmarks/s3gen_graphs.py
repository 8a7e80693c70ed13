"""S3Gen window batches on the GPU: CUDA graphs (encoder, estimator, vocoder) vs eager.

    python benchmarks/s3gen_graphs.py [--model-dir DIR] [--batches 1,8,32]

Same weights, same windows, same run: B utterances each make a first window
(10 new tokens), then a second one (50 new tokens, 25 of context) is timed,
flow + vocoder, with graphs and eagerly (both bfloat16 flow, float32 vocoder).
Reports ms per batch and per window, the phase split (encoder, estimator,
vocoder; a device sync at each phase end), the audio difference between the
two paths (they must agree), capture time and GPU memory. Writes
benchmarks/results/s3gen_graphs.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.chatterbox.checkpoint import load_checkpoint  # noqa: E402
from engine.chatterbox.random_checkpoint import benchmark_checkpoint  # noqa: E402
from engine.chatterbox.s3gen_streamer import FlowJob, S3GenStreamer  # noqa: E402


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run(st: S3GenStreamer, voice, tokens: torch.Tensor, b: int, reps: int) -> tuple[float, dict, list[np.ndarray]]:
    """Median ms of the second window over ``reps`` fresh batches; phase split of the last; audio of the last.
    ``voice``: one voice, or a list (one per utterance: a batch mixing voices)."""
    dev = st.device
    times, audio = [], []
    voices = voice if isinstance(voice, list) else [voice] * b
    for rep in range(reps + 1):
        utts = [st.new_utterance(voices[i], 100 + i, 200) for i in range(b)]
        st.flow_batch([FlowJob(u, tokens[:13], False) for u in utts])
        first = st.vocode(utts, [False] * b)
        sync(dev)
        st.profile = rep == reps
        st.timings = {}
        t0 = time.perf_counter()
        st._phase(None)
        st.flow_batch([FlowJob(u, tokens[:63], False) for u in utts])
        second = st.vocode(utts, [False] * b)
        sync(dev)
        if rep:  # the first round warms up (lazy captures, autotuning)
            times.append((time.perf_counter() - t0) * 1e3)
        audio = [np.concatenate([x, y]) for x, y in zip(first, second)]
    st.profile = False
    return float(np.median(times)), {k: v * 1e3 for k, v in st.timings.items()}, audio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="/tmp/chatterbox-random")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    benchmark_checkpoint(a.model_dir)
    dev = torch.device(a.device)
    ckpt = load_checkpoint(a.model_dir, a.device)
    tokens = torch.randint(0, 6561, (80,), generator=torch.Generator().manual_seed(3)).to(dev)
    eager = S3GenStreamer(ckpt.s3gen, dev, flow_dtype=torch.bfloat16, cuda_graphs=False)
    graphs = S3GenStreamer(ckpt.s3gen, dev, flow_dtype=torch.bfloat16, cuda_graphs=True)
    voice_e = eager.prepare_voice(ckpt.conds.gen)
    voice_g = graphs.prepare_voice(ckpt.conds.gen)
    free = (lambda: torch.cuda.mem_get_info(dev)[0]) if dev.type == "cuda" else (lambda: 0)
    free0 = free()
    t0 = time.perf_counter()
    graphs.capture_graphs(voice_g, 75)
    capture_s = time.perf_counter() - t0
    graph_mem_gb = (free0 - free()) / 2 ** 30
    rows = []
    for b in (int(x) for x in a.batches.split(",")):
        ms_e, ph_e, au_e = run(eager, voice_e, tokens, b, a.reps)
        ms_g, ph_g, au_g = run(graphs, voice_g, tokens, b, a.reps)
        ref = np.concatenate(au_e)
        err = ref - np.concatenate(au_g)
        snr = float(10 * np.log10((ref ** 2).sum() / max((err ** 2).sum(), 1e-30)))
        rows.append(dict(batch=b, eager_ms=ms_e, graphs_ms=ms_g, speedup=ms_e / ms_g,
                         eager_phases_ms=ph_e, graphs_phases_ms=ph_g, max_abs_diff=float(np.abs(err).max()),
                         snr_db=snr, audio_s=sum(len(x) for x in au_g) / 24000))
        print(rows[-1], flush=True)
    # A batch mixing two voices: the graphs swap the voices' reference states in and out
    # (encoder and estimator) within one batch; they must still agree with eager.
    gen = ckpt.conds.gen
    other = dict(gen, prompt_token=torch.as_tensor(gen["prompt_token"]).flip(-1),
                 prompt_feat=torch.as_tensor(gen["prompt_feat"]).flip(-2), embedding=-torch.as_tensor(gen["embedding"]))
    mixed_e = [voice_e, eager.prepare_voice(other)] * 4
    mixed_g = [voice_g, graphs.prepare_voice(other)] * 4
    _, _, au_e = run(eager, mixed_e, tokens, 8, 1)
    _, _, au_g = run(graphs, mixed_g, tokens, 8, 1)
    ref = np.concatenate(au_e)
    err = ref - np.concatenate(au_g)
    two_voices_snr = float(10 * np.log10((ref ** 2).sum() / max((err ** 2).sum(), 1e-30)))
    print(f"two voices in one batch of 8, graphs vs eager: {two_voices_snr:.1f} dB", flush=True)
    result = dict(card=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", date=dt.date.today().isoformat(), capture_s=capture_s,
                  graph_mem_gb=graph_mem_gb, torch=torch.__version__, rows=rows, two_voices_snr_db=two_voices_snr)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "s3gen_graphs.json").write_text(json.dumps(result, indent=2))
    lines = [f"# S3Gen window batch: CUDA graphs vs eager ({result['card']}, {result['date']})", "",
             f"Second window (50 new + 25 context tokens) per utterance; graphs captured in {capture_s:.1f} s, "
             f"{graph_mem_gb:.1f} GB.", "",
             "| batch | eager ms | graphs ms | speed-up | eager enc/est/voc ms | graphs enc/est/voc ms | audio SNR graphs vs eager |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = lambda p: "/".join(f"{p.get(k, 0):.1f}" for k in ("encoder", "estimator", "vocoder"))  # noqa: E731
        lines.append(f"| {r['batch']} | {r['eager_ms']:.1f} | {r['graphs_ms']:.1f} | {r['speedup']:.1f}x | "
                     f"{fmt(r['eager_phases_ms'])} | {fmt(r['graphs_phases_ms'])} | {r['snr_db']:.1f} dB |")
    lines += ["", f"A batch of 8 mixing two voices (alternating): graphs vs eager {two_voices_snr:.1f} dB."]
    (out / "s3gen_graphs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
