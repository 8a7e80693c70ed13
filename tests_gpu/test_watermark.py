"""The batched watermark on the GPU: equal to marking each window alone, and marking on its own
CUDA stream, so a chunk is marked while the GPU worker's queued work is still running."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from .conftest import DEVICE, ON_GPU

pytest.importorskip("perth")


@pytest.fixture(scope="module")
def wm():
    from engine.watermark import Watermarker

    return Watermarker(24000, str(DEVICE))


def test_windows_marked_in_batches_equal_each_marked_alone_on_the_gpu(wm):
    """Windows of the scheduler's lengths and a last window's odd one, batched per length, against
    each alone on the same device (cuDNN may pick another algorithm per batch size: 1e-4)."""
    from tests.test_watermark_batch import voiced

    sizes = [24000] * 8 + [6720] * 4 + [7200, 5003]
    chunks = [voiced(n, i) for i, n in enumerate(sizes)]
    batched = wm.apply_many(chunks)
    for c, b in zip(chunks, batched):
        assert np.abs(wm.apply(c) - b).max() < 1e-4
    assert wm.detect(batched[0]) > 0.9


def test_marking_does_not_wait_for_work_queued_on_the_default_stream(wm):
    """About a second of work queued on the default stream (as the GPU worker's batches are):
    a chunk handed to the BatchMarker comes back marked long before that work ends. (On a CPU,
    the SIP_TTS_GPU_TEST_DEVICE=cpu smoke run, only the marked chunk is checked.)"""
    from engine.watermark import BatchMarker
    from tests.test_watermark_batch import voiced

    marker = BatchMarker(wm)
    chunk = voiced(24000, 1)
    warm = threading.Event()
    marker.put(lambda item: warm.set(), chunk)  # its stream, shapes and cuDNN plans made first
    assert warm.wait(60)
    if ON_GPU:
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(2_000_000_000)  # ~1 s of GPU cycles on the default stream
        end.record()
    got: list = []
    done = threading.Event()
    t0 = time.perf_counter()
    marker.put(lambda item: (got.append(item), done.set()), chunk)
    assert done.wait(30)
    marked_after = time.perf_counter() - t0
    marker.close()
    if ON_GPU:
        torch.cuda.synchronize()
        queued_ms = start.elapsed_time(end)
        assert queued_ms > 500, queued_ms  # the queued work really was long
        assert marked_after * 1e3 < queued_ms / 2, (marked_after, queued_ms)
    assert np.abs(got[0] - wm.apply(chunk)).max() < 1e-4
