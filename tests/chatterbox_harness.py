"""Driving the Chatterbox scheduler directly in tests (CPU here, GPU in tests_gpu/): utterances submitted
with their chunks collected, and T3's steps counted while an S3Gen batch is in flight."""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import torch

from engine.chatterbox.scheduler import Request


def count_steps_in_flight(sched) -> Callable[[], int]:  # type: ignore[no-untyped-def]
    """Wrap the scheduler's T3 step; the returned function says how many ran while a batch was in flight."""
    count = 0
    step = sched._t3_step

    def counted() -> None:
        nonlocal count
        count += sched._inflight is not None
        step()
    sched._t3_step = counted
    return lambda: count


def submit_utterances(sched, voices: list, n: int  # type: ignore[no-untyped-def]
                      ) -> tuple[list[list[np.ndarray]], list[threading.Event], list[Request]]:
    """``n`` short utterances (the voices in turn, 40 + 10 i tokens, seed i): each one's chunks, its
    end (set on None or on an error: an error then fails the caller's size checks) and its request."""
    outs, dones, reqs = [], [], []
    for i in range(n):
        chunks: list[np.ndarray] = []
        done = threading.Event()

        def deliver(item, chunks=chunks, done=done) -> None:  # type: ignore[no-untyped-def]
            if isinstance(item, np.ndarray):
                chunks.append(item)
            else:
                done.set()
        req = Request(torch.tensor([100 + i, 200, 300]), voices[i % len(voices)], deliver,
                      max_tokens=40 + 10 * i, seed=i)
        sched.submit(req)
        outs.append(chunks)
        dones.append(done)
        reqs.append(req)
    return outs, dones, reqs
