"""GPU-only tests (``make test-gpu``): each fused kernel and CUDA graph against its eager path,
S3Gen on its own stream against the sequential loop, mixed voices in one batch, float16/bfloat16.

They run where CUDA is: on a host without it every test here is skipped (and the root conftest
makes that skip fail when SIP_TTS_NO_SKIPS=1, which ``make test-gpu`` and
benchmarks/device_test_gpu.sh set: a GPU run that ran nothing is not green).

``SIP_TTS_GPU_TEST_DEVICE=cpu`` runs the same code on the CPU, where every fast path falls back
to its reference: a smoke run of the tests themselves (it proves nothing about the GPU paths,
and the checks that the fast path was taken are off).

Weights are random (real S3Gen/HiFT architecture; T3 with real 1024-wide layers, fewer of them):
the comparisons are between two implementations of the same computation, so no real voice is needed.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")

DEVICE = torch.device(os.environ.get("SIP_TTS_GPU_TEST_DEVICE", "cuda"))
ON_GPU = DEVICE.type == "cuda"
T3_LAYERS = int(os.environ.get("SIP_TTS_GPU_TEST_T3_LAYERS", "6" if ON_GPU else "4"))
T3_WIDTH = int(os.environ.get("SIP_TTS_GPU_TEST_T3_WIDTH", "1024" if ON_GPU else "256"))


def pytest_collection_modifyitems(config, items):
    if ON_GPU and not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA device (make test-gpu runs on the GPU machine)")
        for item in items:
            if "tests_gpu" in str(item.fspath):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory):
    from engine.chatterbox.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt"), t3_layers=T3_LAYERS, t3_width=T3_WIDTH,
                                   seed=3, block_stop=True)


@pytest.fixture(scope="session")
def ckpt(ckpt_dir):
    from engine.chatterbox.checkpoint import load_checkpoint

    return load_checkpoint(ckpt_dir, str(DEVICE))


def snr_db(ref, got) -> float:
    """10 log10(|ref|^2 / |ref - got|^2), in float64 (inf when equal)."""
    import numpy as np

    ref = np.asarray(ref, dtype=np.float64)
    err = float(((ref - np.asarray(got, dtype=np.float64)) ** 2).sum())
    return float("inf") if err == 0 else 10 * float(np.log10((ref ** 2).sum() / err))
