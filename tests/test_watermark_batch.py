"""The batched watermark path (``Watermarker.apply_many``, ``BatchMarker``) against marking each
window alone (``Watermarker.apply``), with Perth's real network on the CPU."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("perth")

from engine.watermark import BatchMarker, Watermarker  # noqa: E402

SR = 24000


@pytest.fixture(scope="module")
def wm():
    return Watermarker(SR)


def voiced(n: int, seed: int) -> np.ndarray:
    """A voice-like signal: a wandering fundamental with harmonics, syllable envelope, breath noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = 110 + 40 * rng.random() + 15 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    return (0.2 * x + 0.005 * rng.standard_normal(n)).astype(np.float32)


def test_chunks_marked_in_batches_equal_each_marked_alone(wm):
    """Windows of one length go through Perth as one batch, never padded: each row is what marking
    it alone gives (float32, 1e-5), for the scheduler's window lengths, a last window's odd length
    and an empty chunk; the mark is there (detector > 0.9 on a marked 1 s window)."""
    sizes = [6720, 6720, 6720, 7200, 7200, 24000, 24000, 5003, 0]  # 280 ms, 300 ms, 1 s, a last window
    chunks = [voiced(n, i) for i, n in enumerate(sizes)]
    alone = [wm.apply(c) for c in chunks]
    batched = wm.apply_many(chunks)
    assert [b.size for b in batched] == sizes
    for a, b in zip(alone, batched):
        assert b.dtype == np.float32
        assert np.abs(a - b).max(initial=0.0) < 1e-5
    assert np.abs(batched[5] - chunks[5]).max() > 1e-4  # marked, not passed through
    assert wm.detect(batched[5]) > 0.9


def test_batch_marker_keeps_each_streams_order_and_batches_across_streams(wm):
    """Four streams' windows handed over together (as the GPU worker delivers one batch) come back
    marked, each stream's items in order, its end (None) and errors passed on after its audio,
    in fewer marking passes than chunks."""
    marker = BatchMarker(wm, linger=0.02)
    got: dict[int, list] = {s: [] for s in range(4)}
    done = threading.Event()
    ends = []

    def sender(s: int):
        def send(item):
            got[s].append(item)
            if item is None or isinstance(item, BaseException):
                ends.append(s)
                if len(ends) == 4:
                    done.set()
        return send

    windows = {s: [voiced(6720, 10 * s), voiced(7200, 10 * s + 1)] for s in range(4)}
    for w in range(2):  # two GPU batches, each one window of every stream
        for s in range(4):
            marker.put(sender(s), windows[s][w])
    for s in range(4):
        marker.put(sender(s), ValueError("synthesis failed") if s == 3 else None)
    assert done.wait(60)
    marker.close()
    for s in range(4):
        audio, end = got[s][:-1], got[s][-1]
        assert len(audio) == 2
        for w in range(2):
            assert np.abs(audio[w] - wm.apply(windows[s][w])).max() < 1e-5
        assert end is None if s < 3 else isinstance(end, ValueError)
    assert marker.marked == 8 and marker.batches < 8, (marker.batches, marker.marked)
