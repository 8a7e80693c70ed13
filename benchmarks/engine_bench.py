"""Chatterbox Turbo: stock package vs our engine, same weights, same card, same run.

    python benchmarks/engine_bench.py [--device cuda] [--model-dir DIR] [--streams 1,8,32,64,128]

Without --model-dir a randomly initialised checkpoint in the real architecture
(GPT-2 medium T3, full S3Gen) is written first; speech lengths are then forced
to real speech (25 tokens per second, utterances of 1 to 15 s) because random
weights never stop on their own (start/stop logits are blocked, as in
../shared/BASELINE.md).

Measured:
* stock: each utterance alone through ``T3.inference_turbo`` + ``S3Gen.inference``
  (nothing streams, one utterance at a time): latency = time to first audio,
  and audio seconds per GPU second. Its first-audio latency at N concurrent
  requests is derived from the measured service times (a FIFO queue: the stock
  package serves one request at a time);
* ours, closed loop: N callers, each starting its next utterance when the
  previous one has played out, for ``--window`` seconds (starts staggered over
  the first second). Time to first audio = submit → first chunk delivered (the
  first chunk holds ≥ 280 ms of 24 kHz audio; resampling it to 8 kHz and G.711
  costs < 1 ms more). An underrun is a 20 ms frame that arrives after a caller
  who started playing at its first chunk would have needed it;
* saturated throughput: as many back-to-back utterances as the slots allow;
* precision: T3 step time and logit error, S3Gen window time and mel error,
  bfloat16 against float32.

Writes benchmarks/results/engine.json and engine.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.chatterbox.checkpoint import load_checkpoint  # noqa: E402
from engine.chatterbox.random_checkpoint import benchmark_checkpoint  # noqa: E402
from engine.chatterbox.s3gen_streamer import FlowJob, S3GenStreamer  # noqa: E402
from engine.chatterbox.scheduler import Request, Scheduler, Voice  # noqa: E402
from engine.chatterbox.t3_runner import SamplingParams, T3Runner  # noqa: E402

TOKENS_PER_S = 25
SR = 24000
FRAME = SR // 50  # 20 ms


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def text_ids_for(seconds: float, rng: random.Random) -> torch.Tensor:
    chars = int(seconds * 2.6 * 5.5)  # 2.6 words/s, ~5.5 characters a word
    return torch.tensor([rng.randrange(0, 50276) for _ in range(math.ceil(chars / 4))])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- stock --------------------------------------------------------------------------
def run_stock(ckpt, device, durations: list[float], rng: random.Random) -> dict:
    t3, s3, conds = ckpt.t3, ckpt.s3gen, ckpt.conds
    rows = []
    for i, seconds in enumerate([durations[0]] + durations):
        ids = text_ids_for(seconds, rng).to(device)[None]
        n_tok = int(seconds * TOKENS_PER_S)
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            toks = t3.inference_turbo(conds.t3, ids, max_gen_len=n_tok - 1)
            toks = toks[toks < 6561]
            toks = torch.cat([toks, torch.tensor([4299] * 3, device=device)])
            sync(device)
            t1 = time.perf_counter()
            wav, _ = s3.inference(speech_tokens=toks, ref_dict=conds.gen, n_cfm_timesteps=2)
            sync(device)
        t2 = time.perf_counter()
        if i == 0:
            continue  # warm-up
        rows.append(dict(seconds=seconds, tokens=int(toks.numel()), audio_s=wav.shape[-1] / SR,
                         t3_ms=(t1 - t0) * 1e3, s3gen_ms=(t2 - t1) * 1e3, total_ms=(t2 - t0) * 1e3))
        print(f"  stock {seconds:4.1f} s: T3 {rows[-1]['t3_ms']:.0f} ms, S3Gen {rows[-1]['s3gen_ms']:.0f} ms", flush=True)
    audio = sum(r["audio_s"] for r in rows)
    busy = sum(r["total_ms"] for r in rows) / 1e3
    return dict(rows=rows, audio_s_per_gpu_s=audio / busy)


def stock_ttfa(rows: list[dict], n: int, trials: int = 200, seed: int = 0) -> dict:
    """First-audio latency with n simultaneous requests served one at a time (FIFO)."""
    rng = random.Random(seed)
    lat = []
    for _ in range(trials):
        t = 0.0
        for _ in range(n):
            t += rng.choice(rows)["total_ms"]
            lat.append(t)
    return dict(p50=pct(lat, 50), p95=pct(lat, 95))


# -- ours -----------------------------------------------------------------------------
@dataclass
class Track:
    seconds: float
    submitted: float = 0.0
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (arrival, samples)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    request: Request | None = None  # its timestamps split first audio into lobby, tokens and S3Gen

    def deliver(self, item) -> None:
        if item is None:
            self.done.set()
        elif isinstance(item, BaseException):
            self.error = item
            self.done.set()
        else:
            self.chunks.append((time.perf_counter(), len(item)))

    @property
    def ttfa_ms(self) -> float:
        return (self.chunks[0][0] - self.submitted) * 1e3

    def underruns(self) -> int:
        """20 ms frames that arrived after their playback deadline (playback starts at the first chunk)."""
        start = self.chunks[0][0]
        late = 0
        pos = 0
        for arrival, n in self.chunks:
            for f in range(pos // FRAME, (pos + n) // FRAME):
                if arrival > start + f * 0.020 + 1e-4:
                    late += 1
            pos += n
        return late

    @property
    def audio_s(self) -> float:
        return sum(n for _, n in self.chunks) / SR

    def ttfa_parts_ms(self) -> tuple[float, float, float] | None:
        """First audio as (lobby + prefill, T3 to the first window, S3Gen wait + batch)."""
        r = self.request
        if r is None or r.admitted_at is None or r.first_window_at is None or not self.chunks:
            return None
        return ((r.admitted_at - self.submitted) * 1e3, (r.first_window_at - r.admitted_at) * 1e3,
                (self.chunks[0][0] - r.first_window_at) * 1e3)

    @property
    def rtf(self) -> float:
        """Real-time factor: submit to last chunk over the audio's length (< 1: faster than real time)."""
        return (self.chunks[-1][0] - self.submitted) / self.audio_s if self.chunks else float("nan")

    @property
    def play_end(self) -> float:
        return self.chunks[0][0] + self.audio_s if self.chunks else self.submitted


UTTERANCE_S = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15)  # a caller's utterance lengths, drawn uniformly (mean 6.6 s)


def start_utterance(sched: Scheduler, voice: Voice, seconds: float, rng: random.Random) -> Track:
    """Submit one utterance of ``seconds`` of speech (forced length) and return its track."""
    tr = Track(seconds)
    tr.submitted = time.perf_counter()
    tr.request = Request(text_ids_for(seconds, rng), voice, tr.deliver,
                         max_tokens=int(seconds * TOKENS_PER_S), seed=rng.randrange(1 << 30))
    sched.submit(tr.request)
    return tr


def closed_loop(sched: Scheduler, voice: Voice, n: int, window: float, rng: random.Random,
                realtime: bool = True, durations: tuple[float, ...] = UTTERANCE_S) -> dict:
    """n callers; each starts its next utterance when the previous one has played out."""
    tracks: list[Track] = []
    next_start = [time.perf_counter() + (i / n if realtime and n > 1 else 0.0) for i in range(n)]
    current: list[Track | None] = [None] * n
    t_end = time.perf_counter() + window
    t0 = time.perf_counter()
    while True:
        now = time.perf_counter()
        if now > t_end + 40:  # watchdog: report what never finished instead of hanging
            for tr in current:
                if tr is not None and not tr.done.is_set():
                    tr.error = RuntimeError(f"stuck: {len(tr.chunks)} chunks after {now - tr.submitted:.0f} s")
            print(f"  watchdog: stats {sched.stats}", flush=True)
            break
        busy = False
        for i in range(n):
            tr = current[i]
            if tr is not None:
                if not tr.done.is_set():
                    busy = True
                    continue
                next_start[i] = max(tr.play_end, now) if realtime else now
                current[i] = None
            if now < t_end and now >= next_start[i]:
                tr = start_utterance(sched, voice, rng.choice(durations), rng)
                current[i] = tr
                tracks.append(tr)
                busy = True
            elif now < t_end:
                busy = True
        if not busy:
            break
        time.sleep(0.002)
    return dict(n=n, **summarise(tracks), wall_s=time.perf_counter() - t0)


def summarise(tracks: list[Track]) -> dict:
    """First audio, underruns and audio of finished utterances; errors of the others."""
    ok = [t for t in tracks if t.error is None and t.chunks]
    errors = [repr(t.error) for t in tracks if t.error is not None]
    ttfa = [t.ttfa_ms for t in ok]
    under = [t.underruns() for t in ok]
    # where the slowest tenth's first audio went: mean lobby / tokens / S3Gen of those >= p90
    slow = [p for t in ok if t.ttfa_ms >= pct(ttfa, 90) and (p := t.ttfa_parts_ms()) is not None]
    tail = [round(float(np.mean([p[k] for p in slow])), 1) for k in range(3)] if slow else None
    return dict(utterances=len(tracks), errors=errors[:3], ttfa_p50=pct(ttfa, 50), ttfa_p95=pct(ttfa, 95),
                ttfa_p99=pct(ttfa, 99), ttfa_tail_parts_ms=tail, ttfa_max=max(ttfa) if ttfa else float("nan"),
                underrun_frames=int(sum(under)), utterances_with_underrun=sum(1 for u in under if u),
                audio_s=sum(t.audio_s for t in ok))


# -- precision ----------------------------------------------------------------------
def precision(ckpt, device, rng: random.Random) -> dict:
    out: dict = {}
    t3 = ckpt.t3
    ids = text_ids_for(5, rng)
    logits = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        r = T3Runner(t3, device, dtype, max_slots=32, max_len=768,
                     sampling=SamplingParams(1.0, 1, 1.0, 1.0), cuda_graphs=device.type == "cuda")
        prefix = r.voice_prefix(ckpt.conds.t3)
        for s in range(32):
            r.admit(s, prefix, ids)
        r.capture_all()
        for _ in range(3):
            r.step(32)
        sync(device)
        t0 = time.perf_counter()
        reps = 50
        for _ in range(reps):
            r.step(32)
        sync(device)
        step_ms = (time.perf_counter() - t0) / reps * 1e3
        _, lg = r.admit(0, prefix, ids)
        logits[name] = lg.float()
        out[f"t3_step_ms_b32_{name}"] = step_ms
        r1 = T3Runner(t3, device, dtype, max_slots=1, max_len=768,
                      sampling=SamplingParams(1.0, 1, 1.0, 1.0), cuda_graphs=device.type == "cuda")
        r1.admit(0, r1.voice_prefix(ckpt.conds.t3), ids)
        r1.capture_all()
        for _ in range(3):
            r1.step(1)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            r1.step(1)
        sync(device)
        out[f"t3_step_ms_b1_{name}"] = (time.perf_counter() - t0) / reps * 1e3
        del r, r1
        torch.cuda.empty_cache() if device.type == "cuda" else None
    ref = logits["float32"]
    out["t3_logit_rel_err_bf16"] = float((logits["bfloat16"] - ref).norm() / ref.norm())
    tokens = torch.randint(0, 6561, (63,), generator=torch.Generator().manual_seed(3)).to(device)
    mels = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        st = S3GenStreamer(ckpt.s3gen, device, flow_dtype=dtype)
        voice = st.prepare_voice(ckpt.conds.gen)
        jobs = [FlowJob(st.new_utterance(voice, 5 + i, 80), tokens, False) for i in range(8)]
        st.flow_batch(jobs)  # warm-up: lazy graph captures and kernel compilation stay out of the timing
        st.vocode([j.utt for j in jobs], [False] * 8)
        sync(device)
        t0 = time.perf_counter()
        jobs = [FlowJob(st.new_utterance(voice, 5 + i, 80), tokens, False) for i in range(8)]
        st.flow_batch(jobs)
        st.vocode([j.utt for j in jobs], [False] * 8)
        sync(device)
        out[f"s3gen_window_ms_b8_{name}"] = (time.perf_counter() - t0) * 1e3
        mels[name] = torch.cat(jobs[0].utt.mel, 1).float()
        del st
    ref = mels["float32"]
    err = mels["bfloat16"] - ref
    out["s3gen_mel_snr_db_bf16"] = float(10 * torch.log10((ref ** 2).sum() / (err ** 2).sum()))
    return out


# -- set-up shared with open_loop.py -----------------------------------------------------
def add_engine_args(ap: argparse.ArgumentParser) -> None:
    """The checkpoint, card and engine settings (engine_bench.py and open_loop.py)."""
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model-dir")
    ap.add_argument("--random-dir", default="/tmp/chatterbox-random")
    ap.add_argument("--max-slots", type=int, default=256)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--vocoder-dtype", default="auto", help="auto: float16 on a GPU (the engine's default)")
    ap.add_argument("--overlap", default="off", choices=["on", "off"],
                    help="S3Gen on its own CUDA stream beside T3 (the engine's default) or alternating with it")
    ap.add_argument("--t3-share", type=float, default=None,
                    help="the scheduler's T3 share (default: the engine's, 1)")
    ap.add_argument("--no-stock", action="store_true")
    ap.add_argument("--small", action="store_true", help="a 4x256 T3 (smoke test on a CPU)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--stack-dump-after", type=float, default=0, help="dump all threads' stacks after S seconds")


def setup(a: argparse.Namespace) -> tuple[torch.device, object, dict]:
    """The device, the checkpoint (a random one in the real architecture unless --model-dir) and
    the result's header (card, date, torch, weights, commit from $COMMIT)."""
    if a.stack_dump_after:
        import faulthandler
        faulthandler.dump_traceback_later(a.stack_dump_after, exit=True)
    device = torch.device(a.device)
    torch.manual_seed(0)
    model_dir = a.model_dir
    if not model_dir:
        model_dir = a.random_dir + ("-small" if a.small else "")
        benchmark_checkpoint(model_dir, *((4, 256) if a.small else (24, 1024)))
    ckpt = load_checkpoint(model_dir, str(device))
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"card: {card}", flush=True)
    result: dict = dict(**run_header(card), torch=torch.__version__,
                        weights="random (real architecture)" if not a.model_dir else a.model_dir)
    return device, ckpt, result


def build_engine(a: argparse.Namespace, ckpt, device: torch.device,
                 capture: bool = True) -> tuple[Scheduler, Voice, str, float | None]:
    """Our scheduler over the checkpoint (graphs captured on a GPU), not started; its voice,
    the vocoder's dtype and that vocoder's SNR against float32 on the reference."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    dtype = getattr(torch, a.dtype)
    runner = T3Runner(ckpt.t3, device, dtype, max_slots=a.max_slots, max_len=1024,
                      cuda_graphs=device.type == "cuda")
    vocoder_dtype = a.vocoder_dtype if a.vocoder_dtype != "auto" else ("float16" if device.type == "cuda" else "float32")
    streamer = S3GenStreamer(ckpt.s3gen, device, flow_dtype=dtype, hift_dtype=getattr(torch, vocoder_dtype),
                             overlap=a.overlap == "on")
    sched = Scheduler(runner, streamer) if a.t3_share is None else Scheduler(runner, streamer, t3_share=a.t3_share)
    voice = Voice("default", runner.voice_prefix(ckpt.conds.t3), streamer.prepare_voice(ckpt.conds.gen))
    vocoder_snr = streamer.vocoder_snr_db(ckpt.conds.gen["prompt_feat"]) if vocoder_dtype != "float32" else None
    print(f"vocoder {vocoder_dtype}: {vocoder_snr} dB against float32 on the reference", flush=True)
    gpu_memory(device, "models + KV cache")
    if capture:
        t0 = time.perf_counter()
        sched.capture_graphs(voice)
        gpu_memory(device, "T3 + flow graphs")
        print(f"CUDA graphs captured in {time.perf_counter() - t0:.1f} s", flush=True)
    return sched, voice, vocoder_dtype, vocoder_snr


def gpu_memory(device: torch.device, tag: str) -> dict:
    """The caching allocator's state (printed): what a first use of a new size would grow."""
    if device.type != "cuda":
        return {}
    st = torch.cuda.memory_stats(device)
    out = dict(allocated_gib=round(st.get("allocated_bytes.all.current", 0) / 2**30, 2),
               reserved_gib=round(st.get("reserved_bytes.all.current", 0) / 2**30, 2),
               segments=st.get("segment.all.current", 0), device_allocs=st.get("num_device_alloc", None),
               alloc_retries=st.get("num_alloc_retries", 0))
    print(f"  [{tag}] {json.dumps(out)}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(ap)
    ap.add_argument("--streams", default="1,8,32,64,128")
    ap.add_argument("--search", default="160,192,256", help="more N to find the real-time limit")
    ap.add_argument("--window", type=float, default=10.0, help="seconds of new utterances per N")
    ap.add_argument("--no-precision", action="store_true")
    ap.add_argument("--durations", default="1,2,3,5,8,10,12,15", help="stock utterance lengths, s")
    a = ap.parse_args()
    device, ckpt, result = setup(a)
    rng = random.Random(0)

    stock: dict = {}
    if not a.no_stock:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        st = run_stock(ckpt, device, [float(x) for x in a.durations.split(",")], rng)
        stock = dict(rows=st["rows"], audio_s_per_gpu_s=st["audio_s_per_gpu_s"],
                     ttfa_ms={str(n): stock_ttfa(st["rows"], n) for n in (1, 8, 32, 64, 128)},
                     max_realtime_streams=int(st["audio_s_per_gpu_s"]),
                     gpu_mem_gb=(torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None,
                     notes="one utterance at a time; ttfa at N is a FIFO queue of measured service times; "
                           "real-time streams = sustained audio seconds per second (no streaming)")
        result["stock"] = stock

    if not a.no_precision:
        result["precision"] = precision(ckpt, device, rng)
        print("precision:", json.dumps(result["precision"]), flush=True)

    sched, voice, vocoder_dtype, vocoder_snr = build_engine(a, ckpt, device)
    sched.start()
    closed_loop(sched, voice, 16, 3.0, rng)  # warm-up: allocator, cuDNN heuristics and cuFFT plans of many shapes

    runs = {}
    for n in [int(x) for x in a.streams.split(",") if x] + [int(x) for x in a.search.split(",") if x]:
        if n > a.max_slots:
            continue
        r = closed_loop(sched, voice, n, a.window, rng)
        runs[str(n)] = r
        print(f"  ours N={n:4d}: ttfa p50 {r['ttfa_p50']:.0f} ms p95 {r['ttfa_p95']:.0f} ms, "
              f"underrun frames {r['underrun_frames']} ({r['utterances_with_underrun']}/{r['utterances']} utt), "
              f"errors {r['errors']}; slowest tenth lobby/T3/S3Gen ms {r['ttfa_tail_parts_ms']}", flush=True)
    sat_n = a.max_slots
    before = dict(sched.stats.__dict__)
    sat = closed_loop(sched, voice, sat_n, a.window, rng, realtime=False)
    print(f"  ours saturated N={sat_n}: {sat['audio_s'] / sat['wall_s']:.1f} audio s per s", flush=True)
    # where the GPU worker's time goes at saturation (a second run, with a sync at each phase's end)
    streamer = sched.streamer
    streamer.profile = True
    before = dict(sched.stats.__dict__)
    prof = closed_loop(sched, voice, sat_n, min(a.window, 5.0), rng, realtime=False)
    streamer.profile = False
    after = sched.stats.__dict__
    profile = {k: after[k] - before[k] for k in ("t3_seconds", "s3_seconds", "steps", "step_batch_sum",
                                                  "flow_batches", "flow_items")}
    profile.update({f"s3_{k}_seconds": v for k, v in streamer.timings.items()})
    profile["wall_s"] = prof["wall_s"]
    print(f"  profile at saturation: {json.dumps(profile)}", flush=True)
    sched.stop()
    ok_n = [int(n) for n, r in runs.items() if r["underrun_frames"] == 0 and not r["errors"]]
    ours = dict(
        ttfa_ms={n: dict(p50=r["ttfa_p50"], p95=r["ttfa_p95"]) for n, r in runs.items()},
        runs=runs,
        max_realtime_streams=max(ok_n) if ok_n else 0,
        audio_s_per_gpu_s=sat["audio_s"] / sat["wall_s"],
        saturated=sat,
        profile=profile,
        gpu_mem_gb=(torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None,
        stats=sched.stats.__dict__,
        dtype=a.dtype,
        overlap=a.overlap,
        t3_share=sched.t3_share,
        vocoder_dtype=vocoder_dtype,
        vocoder_snr_db_vs_float32=vocoder_snr,
    )
    result["ours"] = ours
    if stock:
        result["throughput_ratio"] = ours["audio_s_per_gpu_s"] / stock["audio_s_per_gpu_s"]

    write_results(a.out, "engine", result, render_md(result))
    return 0


def write_results(out_dir: str, name: str, result: dict, md: str) -> None:
    """``name``.json and ``name``.md under ``out_dir`` (made if missing); the markdown printed too."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{name}.md").write_text(md)
    print(md)


def run_header(card: str) -> dict:
    """What every result records first: the card, the UTC date and the commit ($COMMIT)."""
    return dict(card=card, date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                commit=os.environ.get("COMMIT", ""))


def render_md(r: dict) -> str:
    lines = [f"# Chatterbox Turbo engine: stock vs ours ({r['card']}, {r['date']}, torch {r['torch']})", "",
             f"Weights: {r['weights']}. Command: `python benchmarks/engine_bench.py`.", ""]
    stock, ours = r.get("stock", {}), r["ours"]
    lines += ["| concurrent streams | stock first audio p50 / p95 ms | ours first audio p50 / p95 ms | ours underrun frames "
              "| ours slowest tenth: lobby / T3 / S3Gen ms |",
              "|---|---|---|---|---|"]
    for n, v in ours["ttfa_ms"].items():
        s = stock.get("ttfa_ms", {}).get(n)
        st = f"{s['p50']:.0f} / {s['p95']:.0f}" if s else "-"
        parts = ours["runs"][n].get("ttfa_tail_parts_ms")
        split = " / ".join(f"{x:.0f}" for x in parts) if parts else "-"
        lines.append(f"| {n} | {st} | {v['p50']:.0f} / {v['p95']:.0f} | {ours['runs'][n]['underrun_frames']} | {split} |")
    lines += ["", "| | stock | ours |", "|---|---|---|",
              f"| max real-time streams (0 underruns) | {stock.get('max_realtime_streams', '-')} | {ours['max_realtime_streams']} |",
              f"| audio s per GPU s | {stock.get('audio_s_per_gpu_s', float('nan')):.2f} | {ours['audio_s_per_gpu_s']:.2f} |",
              f"| peak GPU memory GiB | {stock.get('gpu_mem_gb') or float('nan'):.1f} | {ours.get('gpu_mem_gb') or float('nan'):.1f} |"]
    if r.get("e2e"):
        lines += ["", "End to end (benchmarks/e2e_load.py): the server with this engine, N calls from UDP callers on "
                  "loopback started within 1 s; prompts of "
                  f"{r['e2e']['max_tokens']} speech tokens; gaps = RTP packets > 30 ms after the previous one "
                  "(client loop clock; in brackets: kernel receive timestamps).", "",
                  "| calls | prompt | engine | ok | INVITE→200 p50 ms | INVITE→first RTP p50 / p95 ms | INVITE→first audible RTP p50 / p95 ms | mean = engine + server ms | gaps / packets |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in r["e2e"]["rows"]:
            where = {True: "own process", False: "in server"}.get(row.get("engine_process"), "in server")
            lines.append(f"| {row['calls']} | {row.get('prompt', 'live')} | {where} | {row['ok']} | {row['invite_200_ms']['p50']:.1f} | "
                         f"{row['first_rtp_ms']['p50']:.0f} / {row['first_rtp_ms']['p95']:.0f} | "
                         f"{row['first_audio_ms']['p50']:.0f} / {row['first_audio_ms']['p95']:.0f} | "
                         f"{_split(row)} | "
                         f"{row['gaps']} ({row.get('gaps_kernel', '-')}) / {row['packets']} |")
    if "throughput_ratio" in r:
        lines.append(f"\nThroughput ratio ours/stock: **{r['throughput_ratio']:.1f}x**")
    if "precision" in r:
        lines += ["", "Precision (bfloat16 vs float32):", ""]
        lines += [f"- {k}: {v:.4g}" for k, v in r["precision"].items()]
    if stock.get("rows"):
        lines += ["", "Stock per utterance:", "", "| audio s | T3 ms | S3Gen ms | total ms |", "|---|---|---|---|"]
        lines += [f"| {x['audio_s']:.2f} | {x['t3_ms']:.0f} | {x['s3gen_ms']:.0f} | {x['total_ms']:.0f} |" for x in stock["rows"]]
    return "\n".join(lines) + "\n"


def _split(row: dict) -> str:
    """INVITE -> first audible mean as the engine's share (the server's histogram) plus the rest."""
    mean, engine = row["first_audio_ms"].get("mean"), row.get("engine_first_audio_mean_ms")
    if mean is None:
        return "-"
    if engine is None:
        return f"{mean:.1f}"
    return f"{mean:.1f} = {engine:.1f} + {row['server_part_mean_ms']:.1f}"


if __name__ == "__main__":
    sys.exit(main())
