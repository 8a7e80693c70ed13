"""The GPU worker: one thread owns the models and interleaves T3 steps with S3Gen windows.

Each turn of its loop:

1. take new requests from a thread-safe queue and admit them into free KV-cache
   slots (prefill); drop cancelled ones (their slot is free before the next step);
2. if an S3Gen window is *due*, run one batched flow + vocoder pass over the
   complete windows, earliest deadline first, up to ``max_flow_batch``
   (batching amortises the launch-bound parts);
3. otherwise one batched T3 decode step for every active utterance (continuous
   batching: active utterances occupy slots ``[0, n)``; a finished one's slot is
   filled by moving the last one down).

Deadlines: a first window's is ``submitted + first_audio_budget``; a later
window's is when its caller runs out of audio. A window of a caller already
listening is *critical* when its deadline is closer than twice the recent cost
of an S3Gen batch: it runs at once. First windows never pre-empt T3's share
(benchmarks/scheduler_sim.py: when they did, a burst of 64 new callers kept
S3Gen busy with batches of 2-3 windows and starved every caller's T3; 5,951
late frames at 64 streams in the cost model, 11 without). Otherwise complete windows run when they are worth running (a first or
last window, or a caller with less than ``slack`` seconds of audio left) and T3
has had its share of the GPU since the last S3Gen batch (``t3_share`` times that
batch's duration): without that share, a stream of new callers, each wanting
its first window at once, starves every caller's T3 below real time. The share
trades first audio for capacity: a larger one makes S3Gen batches larger and so
cheaper per window (1 window 12.5 ms, 32 windows 80 ms on an H100). Measured in
one H100 session (engine_notes.md, run 27), share 2 against 1: late frames at
160 streams 8,581 -> 865, at 192 54,929 -> 111; first audio p95 at 64 streams
390 -> 595 ms. The default is 1 (0 late frames up to 64 streams either way, the
engine's default slot count); a deployment for more streams per GPU sets 2. A
share that grew with the number of utterances did not carry 192 streams in the
cost model (it entered the start burst at share 1 and never caught up).
Windows hold at most ``windows[-1]`` new tokens, so one batch's cost is bounded.
Window sizes (10, 15, 25, 50, 75 tokens) grow so that each chunk's audio covers
the time to make the next one: the first chunk holds 280 ms, and 15 tokens of
T3 plus one S3Gen batch fit in it even with T3 sharing the GPU (measured on an
H100: with 10, 25, … most callers at 32 streams ran dry after the first chunk).

Audio goes back through each request's ``deliver`` callback
(``loop.call_soon_threadsafe`` on the asyncio side), which never blocks.

Overlap (GPU, optional: ``S3GenStreamer(overlap=True)``, off by default): T3 and
S3Gen run on two CUDA streams from this one thread. A
batch of windows is *launched* on S3Gen's stream and collected when its event
has completed; T3 keeps stepping meanwhile on a stream of higher priority, so
the GPU's block scheduler gives T3's small kernels the next free SMs and an
S3Gen batch (15-110 ms) no longer stops every caller's token stream. One batch
is in flight at a time; windows completed meanwhile form the next, larger one.
T3's share (above) is then not needed and is not applied. One thread, so
nothing can wait on another: a version with two threads and two streams hung
under load on an H100 (both threads blocked in device syncs, see
benchmarks/results/engine_notes.md, run 7). On a CPU, or while profiling, a
launched batch is complete when ``launch`` returns and the loop alternates.
Measured on an H100 in one run (engine_notes.md, run 23): overlap gave 238 vs 228
audio s per s but 64 vs 0 late frames at 128 streams and 1,256 vs 108 at 160:
near capacity the GPU has no idle time to fill, and T3's steps slow down beside
S3Gen's kernels while the alternating loop spends T3's share where it is due.
So the loop alternates unless asked otherwise.
Window sizes grow (``windows``: 10, 15, 25 … tokens): the first is small so
first audio comes early, later ones are larger because each window re-reads
the context.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .s3gen_streamer import (
    LOOKAHEAD_TOKENS, SILENCE_TOKEN, TOKEN_MEL_RATIO, FlowJob, PendingAudio, S3GenStreamer, UtteranceAudio, VoiceGen,
)
from .t3_runner import STOP_TOKEN, SamplingParams, T3Runner, VoicePrefix

log = logging.getLogger(__name__)

SPEECH_VOCAB = 6561  # tokens at or above this (start/stop) are not speech


@dataclass
class Voice:
    name: str
    prefix: VoicePrefix
    gen: VoiceGen


@dataclass(eq=False)  # identity semantics: requests are compared by object, never by value
class Request:
    text_ids: torch.Tensor
    voice: Voice
    deliver: Callable[[np.ndarray | BaseException | None], None]  # audio chunk, error, or None at the end
    max_tokens: int = 1000
    seed: int = 0
    background: bool = False  # nobody listens yet (prompt-cache rendering): never pre-empts callers
    sampling: SamplingParams | None = None  # None: the runner's (the engine's defaults)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    # worker-side state
    slot: int = -1
    tokens: list[int] = field(default_factory=list)
    utt: UtteranceAudio | None = None
    window_index: int = 0
    next_window_at: int = 0
    t3_done: bool = False
    first_audio: float | None = None
    admitted_at: float | None = None  # left the lobby (prefill done): first audio's breakdown
    first_window_at: float | None = None  # its first window complete, waiting for S3Gen
    queued: bool = False  # a complete window waits for S3Gen
    dropped: bool = False  # cancelled and counted
    audio_seconds: float = 0.0  # delivered so far

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class SchedulerStats:
    steps: int = 0
    step_batch_sum: int = 0
    flow_batches: int = 0
    prefills: int = 0  # batched prefills (admissions)
    prefill_seconds: float = 0.0  # their share of t3_seconds
    flow_items: int = 0
    admitted: int = 0
    finished: int = 0
    cancelled: int = 0
    t3_seconds: float = 0.0
    s3_seconds: float = 0.0
    audio_seconds: float = 0.0  # delivered
    turn_max_s: float = 0.0  # the longest turn of the loop (a first-use cost shows here)


class Scheduler:
    def __init__(self, runner: T3Runner, streamer: S3GenStreamer, windows: tuple[int, ...] = (10, 15, 25, 50, 75),
                 max_flow_batch: int = 32, slack: float = 1.0, first_audio_budget: float = 0.15,
                 t3_share: float = 1.0, max_admit: int = 32, admit_share: float = 3.0) -> None:
        self.runner = runner
        self.streamer = streamer
        self.windows = windows
        self.max_flow_batch = max_flow_batch
        self.slack = slack
        self.first_audio_budget = first_audio_budget
        self.t3_share = t3_share
        self.max_admit = max_admit  # prefills batched per turn
        self.admit_share = admit_share  # other work between prefills, in prefill durations
        self._last_admit = 0.0  # when the last prefill ended
        self._admit_cost = 0.0  # how long it took
        self._lobby: list[Request] = []  # arrived, not yet admitted
        self._flow_cost = 0.02  # seconds, moving average of an S3Gen batch
        self._last_flow = 0.0  # duration of the last S3Gen batch
        self._t3_since_flow = 0.0  # T3 time since it
        self._inbox: "queue.Queue[Request | None]" = queue.Queue()
        self._active: list[Request] = []  # T3 running; index == slot
        self._pending: list[Request] = []  # a complete window waits for S3Gen
        self._inflight: tuple[list[Request], list[FlowJob], PendingAudio, float] | None = None  # launched batch
        self._thread: threading.Thread | None = None
        self._stop = False
        self.stats = SchedulerStats()

    # -- API (any thread) -------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="tts-gpu-worker", daemon=True)
            self._thread.start()

    def capture_graphs(self, voice: Voice) -> None:
        """CUDA graphs of every T3 batch bucket and every S3Gen (batch, frames) bucket a window can hit."""
        self.runner.capture_all(voice.prefix)
        self.streamer.capture_graphs(voice.gen, self.windows[-1])

    def submit(self, req: Request) -> None:
        self._inbox.put(req)

    def stop(self) -> None:
        self._stop = True
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    @property
    def queue_depth(self) -> int:
        return self._inbox.qsize() + len(self._lobby)

    # -- the loop -----------------------------------------------------------------
    def _run(self) -> None:
        if self.streamer.overlaps and self.streamer.device.type == "cuda":  # T3 on its own stream, ahead of S3Gen's
            torch.cuda.set_stream(torch.cuda.Stream(self.streamer.device, priority=-5))
        while not self._stop:
            try:
                t0 = time.perf_counter()
                self._turn()
                self.stats.turn_max_s = max(self.stats.turn_max_s, time.perf_counter() - t0)
            except Exception as exc:  # a failed batch fails its requests, never the worker
                log.exception("GPU worker turn failed")
                inflight = self._inflight[0] if self._inflight is not None else []
                self._inflight = None
                for req in dict.fromkeys(self._active + self._pending + inflight):
                    req.deliver(exc)
                    req.slot = -1
                self._active.clear()
                self._pending.clear()

    def _turn(self) -> None:
        self._take_inbox(block=not self._active and not self._pending and self._inflight is None)
        self._drop_cancelled()
        if self._inflight is not None and (not self._active or self._inflight[2].done()):
            self._collect()  # (waits for the GPU only when T3 has nothing to do)
        if self._inflight is None:
            due = self._due_windows()
            if due:
                self._launch(due)
                if not self.streamer.overlaps:
                    self._collect()
                    return  # alternate: T3's turn comes next
        if self._active:
            self._t3_step()

    def _deadline(self, r: Request) -> float:
        if r.first_audio is None:
            return r.submitted + self.first_audio_budget
        return r.first_audio + r.audio_seconds

    def _due_windows(self) -> list[Request]:
        if not self._pending:
            return []
        now = time.perf_counter()
        self._pending.sort(key=self._deadline)
        # Only a caller already listening can run dry; a first window waits for T3's share like
        # the rest (else a burst of new callers keeps S3Gen busy and starves everyone's T3).
        critical = any(r.first_audio is not None and not r.background
                       and self._deadline(r) - now < 2 * self._flow_cost for r in self._pending)
        if not critical and self._active:
            listening = any(r.first_audio is not None and not r.background for r in self._active) or \
                any(r.first_audio is not None and not r.background for r in self._pending)
            if listening and not self.streamer.overlaps and self._t3_since_flow < self.t3_share * self._last_flow:
                return []  # T3's share first: callers already listening need their next tokens
            if not any(not r.background and (r.t3_done or r.first_audio is None
                                             or self._deadline(r) - now < self.slack) for r in self._pending):
                return []  # (background windows ride along in batches that run anyway, or when T3 is idle)
        batch = self._pending[: self.max_flow_batch]
        self._pending = self._pending[self.max_flow_batch:]
        return batch

    def _take_inbox(self, block: bool) -> None:
        """Admit waiting requests into free slots: one batched prefill per voice.

        While utterances are running, arrivals wait in a lobby until the GPU has spent
        ``admit_share`` times the last prefill's duration on other work since it (or until
        ``max_admit`` wait): a prefill costs about the same for one request as for many, and
        admitting a burst of callers one by one spent the GPU's time on prefills while the
        callers already listening ran dry (benchmarks/scheduler_sim.py, H100 costs: 288 late
        frames at 64 streams and 17,552 at 128 admitting at once; 0 and 80 with the lobby).
        The share is 3: with S3Gen's costs of session 4 the model gave first audio p95 at 32
        streams 197 ms against 239 ms at 10, with no more late frames at 128.
        A lone caller, or the first of a burst, is admitted at once.
        """
        while True:
            try:
                req = self._inbox.get(block=block and not self._lobby, timeout=None)
            except queue.Empty:
                break
            block = False
            if req is None:
                break
            self._lobby.append(req)
        self._lobby = [r for r in self._lobby if not r.cancelled.is_set()]
        if not self._lobby:
            return
        if self._active and len(self._lobby) < self.max_admit and \
                time.perf_counter() - self._last_admit < self.admit_share * self._admit_cost:
            return
        free = self.runner.max_slots - len(self._active)
        taken, self._lobby = self._lobby[:min(free, self.max_admit)], self._lobby[min(free, self.max_admit):]
        by_voice: dict[int, list[Request]] = {}
        for req in taken:
            by_voice.setdefault(id(req.voice), []).append(req)
        for group in by_voice.values():
            self._admit(group)

    def _admit(self, reqs: list[Request]) -> None:
        t0 = time.perf_counter()
        prefix = reqs[0].voice.prefix
        ok = []
        for req in reqs:
            # positions: voice prefix, text, the start token, then one per speech token
            room = self.runner.max_len - 1 - (prefix.length + req.text_ids.numel() + 1)
            if room < self.windows[0] + LOOKAHEAD_TOKENS:
                req.deliver(ValueError(f"text too long: {req.text_ids.numel()} tokens with a "
                                       f"{prefix.length}-token voice prefix leave no room for speech in the "
                                       f"{self.runner.max_len}-position cache"))
            else:
                req.max_tokens = min(req.max_tokens, room)  # the length cap: never past the cache
                ok.append(req)
        if not ok:
            return
        slots = list(range(len(self._active), len(self._active) + len(ok)))
        self.runner.admit_many(slots, prefix, [r.text_ids for r in ok],
                               [r.sampling or self.runner.sampling for r in ok], [r.seed for r in ok])
        firsts = self.runner.tokens[slots[0]:slots[-1] + 1].tolist()  # one host sync for the group
        for req, slot, first in zip(ok, slots, firsts):
            req.slot = slot
            req.tokens = [int(first)]
            req.utt = self.streamer.new_utterance(req.voice.gen, req.seed, req.max_tokens + LOOKAHEAD_TOKENS)
            req.next_window_at = self.windows[0] + LOOKAHEAD_TOKENS
            req.admitted_at = time.perf_counter()
            self._active.append(req)
            self.stats.admitted += 1
        self._last_admit = time.perf_counter()
        self._admit_cost = self._last_admit - t0
        self.stats.prefills += 1
        self.stats.prefill_seconds += self._admit_cost
        self.stats.t3_seconds += self._admit_cost
        for req in ok:
            self._after_token(req)

    def _free_slot(self, req: Request) -> None:
        if req.slot < 0:
            return
        last = self._active[-1]
        if last is not req:
            self.runner.move_slot(last.slot, req.slot, int(self.runner.positions[last.slot]) + 1)
            self._active[req.slot] = last
            last.slot = req.slot
        self._active.pop()
        req.slot = -1

    def _drop_cancelled(self) -> None:
        for req in [r for r in self._active if r.cancelled.is_set()]:
            self._free_slot(req)
            self._count_cancel(req)
        for req in [r for r in self._pending if r.cancelled.is_set()]:
            self._pending.remove(req)
            self._count_cancel(req)

    def _count_cancel(self, req: Request) -> None:
        if not req.dropped:
            req.dropped = True
            self.stats.cancelled += 1

    def _t3_step(self) -> None:
        t0 = time.perf_counter()
        n = len(self._active)
        new = self.runner.step(n).tolist()  # one host sync per step
        self.stats.steps += 1
        self.stats.step_batch_sum += n
        for req, tok in zip(list(self._active), new):
            req.tokens.append(tok)
            self._after_token(req)
        dt = time.perf_counter() - t0
        self.stats.t3_seconds += dt
        self._t3_since_flow += dt

    def _after_token(self, req: Request) -> None:
        last = req.tokens[-1]
        if last == STOP_TOKEN or len(req.tokens) >= req.max_tokens:
            req.tokens = [t for t in req.tokens if t < SPEECH_VOCAB] + [SILENCE_TOKEN] * 3
            req.t3_done = True
            self._free_slot(req)
        self._mark_ready(req)

    def _mark_ready(self, req: Request) -> None:
        if not req.queued and (req.t3_done or len(req.tokens) >= req.next_window_at):
            req.queued = True
            if req.first_window_at is None:
                req.first_window_at = time.perf_counter()
            self._pending.append(req)

    def _launch(self, ready: list[Request]) -> None:
        """Enqueue one S3Gen batch (flow + vocoder) over the windows in ``ready``."""
        t0 = time.perf_counter()
        device = self.streamer.device
        picks = []
        for req in ready:
            toks = req.tokens if req.t3_done else [t for t in req.tokens if t < SPEECH_VOCAB]
            final = req.t3_done
            limit = req.utt.mel_done // TOKEN_MEL_RATIO + self.windows[-1] + LOOKAHEAD_TOKENS
            if len(toks) > limit:  # bounded window: the rest waits for the next one
                toks, final = toks[:limit], False
            picks.append((toks, final))
        # every window's tokens in one host-to-device copy (one per window cost ~1 ms a batch of 32)
        flat = torch.tensor([t for toks, _ in picks for t in toks], dtype=torch.long).to(device)
        jobs, at = [], 0
        for req, (toks, final) in zip(ready, picks):
            jobs.append(FlowJob(req.utt, flat[at:at + len(toks)], final))
            at += len(toks)
        self._inflight = (ready, jobs, self.streamer.launch(jobs), t0)

    def _collect(self) -> None:
        """Deliver the audio of the batch in flight (waiting for the GPU if it is not done)."""
        assert self._inflight is not None
        ready, jobs, pending, t0 = self._inflight
        audio = self.streamer.collect(pending)  # ends the host copy's wait
        self._inflight = None
        self.stats.flow_batches += 1
        self.stats.flow_items += len(ready)
        now = time.perf_counter()
        for req, job, chunk in zip(ready, jobs, audio):
            req.queued = False
            if req.cancelled.is_set():  # hung up while its window ran: nothing more to send
                self._count_cancel(req)
                continue
            if chunk.size:
                if req.first_audio is None:
                    req.first_audio = now
                req.audio_seconds += chunk.size / 24000
                self.stats.audio_seconds += chunk.size / 24000
                req.deliver(chunk)
            if job.final:
                req.deliver(None)
                self.stats.finished += 1
                continue
            req.window_index += 1
            req.next_window_at = job.tokens.numel() + self.windows[min(req.window_index, len(self.windows) - 1)]
            self._mark_ready(req)  # it may be complete again already
        gpu = pending.gpu_seconds()  # overlapped, the host's clock would count T3's steps too
        dt = gpu if gpu is not None else time.perf_counter() - t0
        self.stats.s3_seconds += dt
        self._last_flow = dt
        self._flow_cost = 0.8 * self._flow_cost + 0.2 * dt
        self._t3_since_flow = 0.0
