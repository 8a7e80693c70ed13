"""The GPU worker's scheduler against a cost model of the H100, on any CPU.

    python benchmarks/scheduler_sim.py [--streams 8,32,64,128] [--window 10]

The real ``Scheduler`` drives stand-ins for T3 and S3Gen that take the time the
H100 took (benchmarks/results/engine_notes.md; defaults from session 5, runs 33-43: a T3
step 1.9 ms + 0.02 ms per stream (t3_step, decode kernel), a prefill 6 ms (prefill_probe,
graphs), an S3Gen batch 11.5 ms + 1.33 ms per window (s3gen_graphs with the float16
vocoder's saving from s3gen_profile); session 4's were 2.5 + 0.03, 15, 10 + 2.2)
and produce tokens and audio of the right sizes. With ``--overlap`` S3Gen runs on
its own stream as on the GPU: a launched batch completes after its cost while T3
keeps stepping, each slowed by sharing the SMs (``--t3-slow``, ``--s3-slow``). The same closed loop as engine_bench.py
(callers start their next utterance when the last has played) reports first
audio and underruns per N, so scheduling policies can be compared without a GPU.
It models time, not the model: what it predicts must still be measured on the card.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine.chatterbox.s3gen_streamer import HOLD, LOOKAHEAD_TOKENS, SAMPLES_PER_FRAME, TOKEN_MEL_RATIO  # noqa: E402
from engine.chatterbox.scheduler import Scheduler, Voice  # noqa: E402
from engine_bench import closed_loop  # noqa: E402


@dataclass
class Costs:
    step_ms: float = 1.9
    step_per_stream_ms: float = 0.02
    prefill_ms: float = 6.0
    flow_ms: float = 11.5
    flow_per_window_ms: float = 1.33
    t3_slow: float = 1.0  # T3 step cost factor while an S3Gen batch runs beside it
    s3_slow: float = 1.0  # S3Gen batch cost factor (it shares the GPU with T3's steps)


def spin(ms: float) -> None:
    """The GPU's time: the worker waits in a device sync (the GIL is free meanwhile, as with torch)."""
    end = time.perf_counter() + ms / 1000
    while (left := end - time.perf_counter()) > 0:
        time.sleep(left)


class FakeRunner:
    def __init__(self, costs: Costs, max_slots: int, streamer: "FakeStreamer") -> None:
        self.costs = costs
        self.streamer = streamer
        self.max_slots = max_slots
        self.max_len = 4096
        self.tokens = torch.zeros(max_slots, dtype=torch.long)
        self.positions = torch.zeros(max_slots, dtype=torch.long)
        self.rng = random.Random(0)

    def admit_many(self, slots, prefix, texts):
        spin(self.costs.prefill_ms)
        for s in slots:
            self.tokens[s] = self.rng.randrange(6561)
            self.positions[s] = 100
        return [100] * len(slots), None

    def step(self, n: int) -> torch.Tensor:
        slow = self.costs.t3_slow if self.streamer.busy() else 1.0
        spin((self.costs.step_ms + self.costs.step_per_stream_ms * n) * slow)
        self.positions[:n] += 1
        return torch.tensor([self.rng.randrange(6561) for _ in range(n)])

    def move_slot(self, src: int, dst: int, length: int) -> None:
        self.tokens[dst] = self.tokens[src]
        self.positions[dst] = self.positions[src]

    def capture_all(self, prefix=None) -> None:
        pass


@dataclass
class FakeUtt:
    mel_done: int = 0
    emitted_frames: int = 0
    mel: list = field(default_factory=list)


@dataclass
class FakePending:
    done_at: float
    audio: list

    def done(self) -> bool:
        return time.perf_counter() >= self.done_at

    def gpu_seconds(self) -> None:
        return None


class FakeStreamer:
    def __init__(self, costs: Costs, overlap: bool) -> None:
        self.costs = costs
        self.device = torch.device("cpu")
        self.context_tokens = 25
        self.graphs = None
        self.overlaps = overlap
        self._done_at = 0.0

    def busy(self) -> bool:
        return time.perf_counter() < self._done_at

    def launch(self, jobs) -> FakePending:
        cost = (self.costs.flow_ms + self.costs.flow_per_window_ms * len(jobs)) / 1000
        if self.overlaps:
            self._done_at = time.perf_counter() + cost * self.costs.s3_slow
        else:
            spin(cost * 1000)
            self._done_at = 0.0
        self.flow_batch(jobs, spend=False)
        return FakePending(self._done_at, self.vocode([j.utt for j in jobs], [j.final for j in jobs]))

    def collect(self, pending: FakePending) -> list:
        spin(max(0.0, pending.done_at - time.perf_counter()) * 1000)
        return pending.audio

    def new_utterance(self, voice, seed, max_tokens):
        return FakeUtt()

    def flow_batch(self, jobs, n_steps: int = 2, spend: bool = True):
        if spend:
            spin(self.costs.flow_ms + self.costs.flow_per_window_ms * len(jobs))
        for job in jobs:
            n = job.tokens.numel()
            usable = n if job.final else max(0, n - LOOKAHEAD_TOKENS)
            job.utt.mel_done = max(job.utt.mel_done, TOKEN_MEL_RATIO * usable)

    def vocode(self, utts, final):
        out = []
        for u, fin in zip(utts, final):
            ready = u.mel_done if fin else u.mel_done - HOLD
            n = max(0, ready - u.emitted_frames)
            u.emitted_frames = max(u.emitted_frames, ready)
            out.append(np.zeros(n * SAMPLES_PER_FRAME, dtype=np.float32))
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="8,32,64,128")
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--windows", default="10,15,25,50,75")
    ap.add_argument("--t3-share", type=float, default=1.0)
    ap.add_argument("--slack", type=float, default=1.0)
    ap.add_argument("--step-ms", type=float, default=1.9)
    ap.add_argument("--step-per-stream-ms", type=float, default=0.02)
    ap.add_argument("--prefill-ms", type=float, default=6.0)
    ap.add_argument("--admit-share", type=float, default=3.0)
    ap.add_argument("--max-flow-batch", type=int, default=32)
    ap.add_argument("--flow-ms", type=float, default=11.5)
    ap.add_argument("--flow-per-window-ms", type=float, default=1.33)
    ap.add_argument("--overlap", action="store_true", help="S3Gen on its own stream beside T3 (the GPU default)")
    ap.add_argument("--t3-slow", type=float, default=1.3)
    ap.add_argument("--s3-slow", type=float, default=1.2)
    ap.add_argument("--out", help="write the rows as JSON here")
    a = ap.parse_args()
    costs = Costs(step_ms=a.step_ms, step_per_stream_ms=a.step_per_stream_ms, prefill_ms=a.prefill_ms,
                  flow_ms=a.flow_ms, flow_per_window_ms=a.flow_per_window_ms, t3_slow=a.t3_slow, s3_slow=a.s3_slow)
    rows = []
    for n in [int(x) for x in a.streams.split(",")]:
        streamer = FakeStreamer(costs, a.overlap)
        sched = Scheduler(FakeRunner(costs, max(n, 1), streamer), streamer,  # type: ignore[arg-type]
                          windows=tuple(int(x) for x in a.windows.split(",")), max_flow_batch=a.max_flow_batch,
                          slack=a.slack, t3_share=a.t3_share, admit_share=a.admit_share)
        sched.start()
        voice = Voice("sim", SimpleNamespace(length=100), None)  # type: ignore[arg-type]
        r = closed_loop(sched, voice, n, a.window, random.Random(n))
        sched.stop()
        st = sched.stats
        r.update(steps=st.steps, flow_batches=st.flow_batches, flow_items=st.flow_items,
                 t3_s=round(st.t3_seconds, 1), s3_s=round(st.s3_seconds, 1))
        rows.append(r)
        print(f"N={n:4d}: first audio p50 {r['ttfa_p50']:.0f} ms p95 {r['ttfa_p95']:.0f} ms, underrun frames "
              f"{r['underrun_frames']} ({r['utterances_with_underrun']}/{r['utterances']} utt); T3 {r['t3_s']} s "
              f"({st.steps} steps), S3Gen {r['s3_s']} s ({st.flow_batches} batches of "
              f"{st.flow_items / max(st.flow_batches, 1):.1f})", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
