"""S3Gen and HiFT on the GPU: CUDA graphs (encoder, estimator, vocoder) against eager, a batch
mixing two voices, the fused Snake inside the whole vocoder, float16/bfloat16 against float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.chatterbox import snake
from engine.chatterbox.s3gen_streamer import FlowJob, S3GenStreamer

from .conftest import DEVICE, ON_GPU, snr_db

WINDOW = 75  # the largest window the graphs are captured for


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 6561, (80,), generator=torch.Generator().manual_seed(3)).to(DEVICE)


def two_windows(st: S3GenStreamer, voices: list, tokens: torch.Tensor) -> np.ndarray:
    """Each utterance: a first window (10 new tokens), then a second (50 new, with context)."""
    utts = [st.new_utterance(v, 100 + i, 200) for i, v in enumerate(voices)]
    st.flow_batch([FlowJob(u, tokens[:13], False) for u in utts])
    first = st.vocode(utts, [False] * len(utts))
    st.flow_batch([FlowJob(u, tokens[:63], False) for u in utts])
    second = st.vocode(utts, [False] * len(utts))
    return np.concatenate([np.concatenate([x, y]) for x, y in zip(first, second)])


def other_gen(gen: dict) -> dict:
    return dict(gen, prompt_token=torch.as_tensor(gen["prompt_token"]).flip(-1),
                prompt_feat=torch.as_tensor(gen["prompt_feat"]).flip(-2), embedding=-torch.as_tensor(gen["embedding"]))


@pytest.fixture(scope="module")
def graphs_and_eager(ckpt):
    """The engine's configuration (bfloat16 flow, float32 vocoder), with and without graphs."""
    graphs = S3GenStreamer(ckpt.s3gen, DEVICE, flow_dtype=torch.bfloat16, cuda_graphs=True)
    eager = S3GenStreamer(ckpt.s3gen, DEVICE, flow_dtype=torch.bfloat16, cuda_graphs=False)
    vg, ve = graphs.prepare_voice(ckpt.conds.gen), eager.prepare_voice(ckpt.conds.gen)
    if ON_GPU:
        assert graphs.graphs is not None and graphs.encoder_graphs is not None and graphs.vocoder_graphs is not None
    graphs.capture_graphs(vg, WINDOW)
    return graphs, eager, vg, ve


@pytest.mark.parametrize("batch", [1, 8, 32] if ON_GPU else [1, 2])  # (CPU: a smoke run)
def test_graphs_equal_eager(graphs_and_eager, tokens, batch):
    """Measured 59.8-59.9 dB on an H100 (benchmarks/results/s3gen_graphs.md): bfloat16 rounding only."""
    graphs, eager, vg, ve = graphs_and_eager
    ref = two_windows(eager, [ve] * batch, tokens)
    got = two_windows(graphs, [vg] * batch, tokens)
    assert got.shape == ref.shape and np.isfinite(got).all() and np.abs(ref).max() > 1e-3
    snr = snr_db(ref, got)
    print(f"S3Gen graphs vs eager, batch {batch}: {snr:.1f} dB")
    assert snr > 45, snr


def test_a_batch_mixing_two_voices_equals_eager(ckpt, graphs_and_eager, tokens):
    """Graphs swap each voice's reference states in and out within one batch (measured 55.0 dB on an
    H100, 62.5 dB on an H200)."""
    graphs, eager, vg, ve = graphs_and_eager
    other = other_gen(ckpt.conds.gen)
    vg2, ve2 = graphs.prepare_voice(other), eager.prepare_voice(other)
    ref = two_windows(eager, [ve, ve2] * 4, tokens)
    got = two_windows(graphs, [vg, vg2] * 4, tokens)
    snr = snr_db(ref, got)
    print(f"S3Gen graphs vs eager, two voices in a batch of 8: {snr:.1f} dB")
    assert snr > 40, snr
    # and the voices are not mixed up: each first-voice utterance of the mixed batch is closer to
    # its own voice's eager audio than to the other voice's. With random weights the two voices
    # sound alike (H200: about 48 dB apart against 62.5 dB graphs vs eager), so the margin is 6 dB.
    alone = two_windows(eager, [ve2] * 8, tokens).reshape(8, -1)
    ref8, got8 = ref.reshape(8, -1), got.reshape(8, -1)
    for i in range(0, 8, 2):
        own, other = snr_db(ref8[i], got8[i]), snr_db(alone[i], got8[i])
        print(f"utterance {i}: own voice {own:.1f} dB, other voice {other:.1f} dB")
        assert own > other + 6, (i, own, other)


def test_fused_snake_in_the_whole_vocoder_equals_the_stock_ops(ckpt, tokens, monkeypatch):
    """float32 flow and vocoder, eager: the same windows with the fused Snake and with the stock
    five-op arithmetic (snake.fused = False) give the same audio."""
    st = S3GenStreamer(ckpt.s3gen, DEVICE, cuda_graphs=False)
    v = st.prepare_voice(ckpt.conds.gen)
    fused = two_windows(st, [v] * 4, tokens)
    monkeypatch.setattr(snake, "fused", False)
    stock = two_windows(st, [v] * 4, tokens)
    snr = snr_db(stock, fused)
    print(f"vocoder, fused Snake vs stock ops: {snr:.1f} dB")
    assert snr > 70, snr


@pytest.mark.parametrize("dtype,floor", [(torch.float16, 35.0), (torch.bfloat16, 20.0)], ids=["float16", "bfloat16"])
def test_low_precision_vocoder_against_float32(ckpt, dtype, floor):
    """HiFT in float16/bfloat16 on the reference mel (the engine's start-up check, which accepts
    >= 40 dB): H100, random weights, measured float16 48.9 dB, bfloat16 31 dB (engine.py)."""
    st = S3GenStreamer(ckpt.s3gen, DEVICE, hift_dtype=dtype, cuda_graphs=False)
    snr = st.vocoder_snr_db(ckpt.conds.gen["prompt_feat"])
    print(f"vocoder {dtype} vs float32: {snr:.1f} dB")
    assert snr > floor, snr


def test_bfloat16_flow_follows_float32(ckpt, tokens):
    """The flow in bfloat16 (the engine's default) against float32, same windows and noise:
    close, finite audio (a wrong cast or overflow gives noise: ~0 dB or NaN)."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        st = S3GenStreamer(ckpt.s3gen, DEVICE, flow_dtype=dtype, cuda_graphs=False)
        out[dtype] = two_windows(st, [st.prepare_voice(ckpt.conds.gen)] * 2, tokens)
    assert np.isfinite(out[torch.bfloat16]).all()
    snr = snr_db(out[torch.float32], out[torch.bfloat16])
    print(f"flow bfloat16 vs float32: {snr:.1f} dB")
    assert snr > 6, snr
