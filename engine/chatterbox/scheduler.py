"""The GPU worker: one thread owns the models and interleaves T3 steps with S3Gen windows.

Each turn of the loop:

1. take new requests and cancellations from a thread-safe queue; admit new
   utterances into free KV-cache slots (prefill), drop cancelled ones (their slot
   is free before the next step);
2. one batched T3 decode step for every active utterance (continuous batching:
   active utterances always occupy slots ``[0, n)``; a finished one's slot is
   filled by moving the last one down);
3. every utterance whose next token window is complete (or whose tokens ended)
   gets its window of S3Gen + HiFT, all such windows batched together;
4. audio chunks go back to their requesters through their ``deliver`` callback
   (``loop.call_soon_threadsafe`` on the asyncio side), which never blocks.

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
                 max_flow_batch: int = 32, sync: bool = True) -> None:
        self.runner = runner
        self.streamer = streamer
        self.windows = windows
        self.max_flow_batch = max_flow_batch
        self._inbox: "queue.Queue[Request | None]" = queue.Queue()
        self._active: list[Request] = []  # T3 running; index == slot
        self._audio: list[Request] = []  # T3 done or running, S3Gen still owes audio
        self._thread: threading.Thread | None = None
        self._stop = False
        self.stats = SchedulerStats()
        self._sync = sync

    # -- API (any thread) -------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tts-gpu-worker", daemon=True)
            self._thread.start()

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
        return self._inbox.qsize()

    # -- the loop -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop:
            try:
                self._turn()
            except Exception as exc:  # a failed batch fails its requests, never the worker
                log.exception("GPU worker turn failed")
                for req in self._active + self._audio:
                    req.deliver(exc)
                self._active.clear()
                self._audio.clear()

    def _turn(self) -> None:
        block = not self._active and not self._audio
        self._take_inbox(block)
        self._drop_cancelled()
        if self._active:
            self._t3_step()
        ready = [r for r in self._audio if self._window_ready(r)]
        if ready:
            self._s3gen(ready[: self.max_flow_batch])

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
        self._audio.append(req)
        self.stats.admitted += 1
        self.stats.t3_seconds += time.perf_counter() - t0
        self._check_end(req)

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
        for req in [r for r in self._audio if r.cancelled.is_set()]:
            self._free_slot(req)
            self._audio.remove(req)
            self.stats.cancelled += 1

    def _t3_step(self) -> None:
        t0 = time.perf_counter()
        n = len(self._active)
        new = self.runner.step(n).tolist()  # one host sync per step
        self.stats.steps += 1
        self.stats.step_batch_sum += n
        for req, tok in zip(list(self._active), new):
            req.tokens.append(tok)
            self._check_end(req)
        self.stats.t3_seconds += time.perf_counter() - t0

    def _check_end(self, req: Request) -> None:
        last = req.tokens[-1]
        if last == STOP_TOKEN or len(req.tokens) >= req.max_tokens:
            req.tokens = [t for t in req.tokens if t < SPEECH_VOCAB] + [SILENCE_TOKEN] * 3
            req.t3_done = True
            self._free_slot(req)

    def _window_ready(self, req: Request) -> bool:
        return req.t3_done or len(req.tokens) >= req.next_window_at

    def _s3gen(self, ready: list[Request]) -> None:
        t0 = time.perf_counter()
        device = self.streamer.device
        jobs = []
        for req in ready:
            toks = [t for t in req.tokens if t < SPEECH_VOCAB] if not req.t3_done else req.tokens
            jobs.append(FlowJob(req.utt, torch.tensor(toks, dtype=torch.long, device=device), req.t3_done))
        self.streamer.flow_batch(jobs)
        audio = self.streamer.vocode([r.utt for r in ready], [r.t3_done for r in ready])
        if self._sync and device.type == "cuda":
            torch.cuda.synchronize(device)
        self.stats.flow_batches += 1
        self.stats.flow_items += len(ready)
        now = time.perf_counter()
        for req, chunk in zip(ready, audio):
            if chunk.size:
                if req.first_audio is None:
                    req.first_audio = now
                req.deliver(chunk)
            if req.t3_done:
                req.deliver(None)
                self._audio.remove(req)
                self.stats.finished += 1
            else:
                req.window_index += 1
                step = self.windows[min(req.window_index, len(self.windows) - 1)]
                req.next_window_at = len(req.tokens) + step
        self.stats.s3_seconds += time.perf_counter() - t0
