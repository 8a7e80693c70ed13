"""The GPU workers: T3 decoding and S3Gen windows, each on its own thread and CUDA stream.

T3 thread, each turn:

1. take new requests from a thread-safe queue and admit them into free KV-cache
   slots (prefill); drop cancelled ones (their slot is free before the next step);
2. one batched decode step for every active utterance (continuous batching:
   active utterances always occupy slots ``[0, n)``; a finished one's slot is
   filled by moving the last one down);
3. an utterance whose next token window is complete (or whose tokens ended) is
   handed to the S3Gen thread.

S3Gen thread: takes the ready utterances, most urgent first (no audio yet, then
the one whose played-out audio runs out soonest), up to ``max_flow_batch`` at a
time, runs one batched flow + vocoder pass and hands each its chunk through its
``deliver`` callback (``loop.call_soon_threadsafe`` on the asyncio side).

The two run concurrently on the GPU, so a long S3Gen batch never stalls token
generation (a single loop that alternated them starved T3 below real time).
Window sizes grow (``windows``: 10, 25, 50 … tokens): the first is small so
first audio comes early, later ones are larger because each window re-reads
the reference and the context.
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

from .s3gen_streamer import LOOKAHEAD_TOKENS, SILENCE_TOKEN, FlowJob, S3GenStreamer, UtteranceAudio, VoiceGen
from .t3_runner import STOP_TOKEN, T3Runner, VoicePrefix

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
    queued: bool = False  # handed to the S3Gen thread, not yet served
    dropped: bool = False  # cancelled and counted
    audio_seconds: float = 0.0  # delivered so far

    def urgency(self) -> float:
        """When the caller runs out of audio (requests with none yet come first)."""
        if self.first_audio is None:
            return self.submitted - 1e6
        return self.first_audio + self.audio_seconds

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class SchedulerStats:
    steps: int = 0
    step_batch_sum: int = 0
    flow_batches: int = 0
    flow_items: int = 0
    admitted: int = 0
    finished: int = 0
    cancelled: int = 0
    t3_seconds: float = 0.0
    s3_seconds: float = 0.0


class Scheduler:
    def __init__(self, runner: T3Runner, streamer: S3GenStreamer, windows: tuple[int, ...] = (10, 25, 50),
                 max_flow_batch: int = 32) -> None:
        self.runner = runner
        self.streamer = streamer
        self.windows = windows
        self.max_flow_batch = max_flow_batch
        self._inbox: "queue.Queue[Request | None]" = queue.Queue()
        self._ready: "queue.Queue[Request | None]" = queue.Queue()
        self._active: list[Request] = []  # T3 running; index == slot
        self._threads: list[threading.Thread] = []
        self._stop = False
        self._ready_lock = threading.Lock()  # guards Request.queued across the two threads
        self.stats = SchedulerStats()

    # -- API (any thread) -------------------------------------------------------------
    def start(self) -> None:
        if not self._threads:
            self._stop = False
            self._threads = [threading.Thread(target=self._guard, args=(self._t3_turn,), name="tts-t3", daemon=True),
                             threading.Thread(target=self._s3gen_loop, name="tts-s3gen", daemon=True)]
            for t in self._threads:
                t.start()

    def submit(self, req: Request) -> None:
        self._inbox.put(req)

    def stop(self) -> None:
        self._stop = True
        self._inbox.put(None)
        self._ready.put(None)
        for t in self._threads:
            t.join(10)
        self._threads = []

    @property
    def queue_depth(self) -> int:
        return self._inbox.qsize()

    # -- T3 thread ------------------------------------------------------------------
    def _stream(self) -> "torch.cuda.Stream | None":
        dev = self.runner.device
        return torch.cuda.Stream(device=dev) if dev.type == "cuda" else None

    def _guard(self, turn: Callable[[], None]) -> None:
        stream = self._stream()
        ctx = torch.cuda.stream(stream) if stream is not None else _nullcontext()
        with ctx:
            while not self._stop:
                try:
                    turn()
                except Exception as exc:  # a failed step fails its requests, never the worker
                    log.exception("T3 turn failed")
                    for req in list(self._active):
                        req.deliver(exc)
                        req.slot = -1
                    self._active.clear()

    def _t3_turn(self) -> None:
        self._take_inbox(block=not self._active)
        self._drop_cancelled()
        if self._active:
            self._t3_step()

    def _take_inbox(self, block: bool) -> None:
        while True:
            try:
                req = self._inbox.get(block=block, timeout=None if block else 0)
            except queue.Empty:
                return
            block = False
            if req is None:
                return
            if req.cancelled.is_set():
                continue
            if len(self._active) >= self.runner.max_slots:
                self._inbox.put(req)  # full: stays queued until a slot frees
                return
            self._admit(req)

    def _admit(self, req: Request) -> None:
        t0 = time.perf_counter()
        slot = len(self._active)
        try:
            self.runner.admit(slot, req.voice.prefix, req.text_ids)
        except ValueError as exc:
            req.deliver(exc)
            return
        req.slot = slot
        req.tokens = [int(self.runner.tokens[slot])]
        req.utt = self.streamer.new_utterance(req.voice.gen, req.seed, req.max_tokens + LOOKAHEAD_TOKENS)
        req.next_window_at = self.windows[0] + LOOKAHEAD_TOKENS
        self._active.append(req)
        self.stats.admitted += 1
        self.stats.t3_seconds += time.perf_counter() - t0
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

    def _count_cancel(self, req: Request) -> None:
        with self._ready_lock:
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
        self.stats.t3_seconds += time.perf_counter() - t0

    def _after_token(self, req: Request) -> None:
        last = req.tokens[-1]
        if last == STOP_TOKEN or len(req.tokens) >= req.max_tokens:
            req.tokens = [t for t in req.tokens if t < SPEECH_VOCAB] + [SILENCE_TOKEN] * 3
            req.t3_done = True  # set after the final token list: the S3Gen thread reads them in this order
            self._free_slot(req)
        self._mark_ready(req)

    def _mark_ready(self, req: Request) -> None:
        with self._ready_lock:
            if not req.queued and (req.t3_done or len(req.tokens) >= req.next_window_at):
                req.queued = True
                self._ready.put(req)

    # -- S3Gen thread -------------------------------------------------------------------
    def _s3gen_loop(self) -> None:
        stream = self._stream()
        ctx = torch.cuda.stream(stream) if stream is not None else _nullcontext()
        pending: list[Request] = []
        with ctx:
            while not self._stop:
                if not pending:
                    item = self._ready.get()
                    if item is None:
                        return
                    pending.append(item)
                while True:
                    try:
                        item = self._ready.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        return
                    pending.append(item)
                for req in [r for r in dict.fromkeys(pending) if r.cancelled.is_set()]:
                    self._count_cancel(req)
                pending = [r for r in dict.fromkeys(pending) if not r.cancelled.is_set()]
                if not pending:
                    continue
                pending.sort(key=Request.urgency)
                batch, pending = pending[: self.max_flow_batch], pending[self.max_flow_batch:]
                try:
                    self._s3gen(batch)
                except Exception as exc:
                    log.exception("S3Gen batch failed")
                    for req in batch:
                        req.cancel()
                        req.deliver(exc)

    def _s3gen(self, ready: list[Request]) -> None:
        t0 = time.perf_counter()
        device = self.streamer.device
        jobs = []
        finals = []
        for req in ready:
            final = req.t3_done
            toks = req.tokens if final else [t for t in list(req.tokens) if t < SPEECH_VOCAB]
            finals.append(final)
            jobs.append(FlowJob(req.utt, torch.tensor(toks, dtype=torch.long, device=device), final))
        self.streamer.flow_batch(jobs)
        audio = self.streamer.vocode([r.utt for r in ready], finals)  # ends in a host copy: synchronised
        self.stats.flow_batches += 1
        self.stats.flow_items += len(ready)
        now = time.perf_counter()
        for req, chunk, final in zip(ready, audio, finals):
            if req.cancelled.is_set():  # hung up while its window ran: nothing more to send
                self._count_cancel(req)
                continue
            if chunk.size:
                if req.first_audio is None:
                    req.first_audio = now
                req.audio_seconds += chunk.size / 24000
                req.deliver(chunk)
            if final:
                req.deliver(None)
                self.stats.finished += 1
                continue
            req.window_index += 1
            step = self.windows[min(req.window_index, len(self.windows) - 1)]
            with self._ready_lock:
                req.next_window_at = len(jobs[ready.index(req)].tokens) + step
                req.queued = False
            self._mark_ready(req)  # it may be ready again already
        self.stats.s3_seconds += time.perf_counter() - t0


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
