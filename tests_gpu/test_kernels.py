"""The Triton kernels against the eager arithmetic they replace, on the GPU."""

from __future__ import annotations

import math

import pytest
import torch

from engine.chatterbox import decode_attention, snake

from .conftest import DEVICE, ON_GPU

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 512, 37), (8, 64, 4801), (32, 256, 1000)], ids=str)
def test_snake_kernel_equals_the_stock_arithmetic(dtype, shape):
    """One fused pass == the five stock element-wise ops (computed in float32, then rounded)."""
    assert snake.triton is not None or not ON_GPU, "Triton missing: the vocoder would run the stock ops"
    g = torch.Generator().manual_seed(shape[2])
    x = (torch.randn(*shape, generator=g) * 3).to(DEVICE, dtype)
    alpha = (torch.rand(shape[1], generator=g) * 2 + 0.05).to(DEVICE, dtype)
    got = snake.snake(x, alpha)
    # the kernel computes in float32 and rounds once (the CPU fallback is the stock ops in ``dtype``)
    want = snake.snake_reference(x.float(), alpha.float()).to(dtype) if ON_GPU else snake.snake_reference(x, alpha)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, want, **TOL[dtype])


def _decode_case(n: int, heads: int = 16, d: int = 64, length: int = 1024, shared: int = 300,
                 dtype: torch.dtype = torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def rand(*s):
        return torch.randn(*s, generator=g).to(DEVICE, dtype)

    q = rand(n, heads, d)
    k, v = rand(n + 3, heads, length, d), rand(n + 3, heads, length, d)
    pk, pv = rand(heads, length, d), rand(heads, length, d)
    if shared:  # every slot's own rows hold the same voice prefix the shared buffer holds
        k[:, :, :shared] = pk[None, :, :shared]
        v[:, :, :shared] = pv[None, :, :shared]
    pos = torch.randint(max(shared, 1), length - 64, (n,), generator=g)
    pos[-1] = length - 64  # one slot at the end of the bucket
    keys = int(math.ceil((int(pos.max()) + 1) / 128) * 128)
    return q, k, v, pk, pv, pos.to(DEVICE), keys


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("n,shared", [(1, 300), (32, 300), (128, 300), (48, 0)])
def test_decode_kernel_equals_sdpa(monkeypatch, dtype, n, shared):
    """The decode kernel (voice prefix from the shared buffer when ``shared``; else each slot's own
    rows from 0) == SDPA over each slot's own rows up to its position."""
    monkeypatch.setattr(decode_attention, "MIN_SLOTS", 1)
    q, k, v, pk, pv, pos, keys = _decode_case(n, shared=shared, dtype=dtype, seed=n + shared)
    assert decode_attention.available(DEVICE, n) or not ON_GPU
    got = decode_attention.attend(q, k, v, pk, pv, pos, shared, keys)
    monkeypatch.setattr(decode_attention, "fused", False)
    want = decode_attention.attend(q, k, v, pk, pv, pos, shared, keys)
    assert got.shape == want.shape == (n, 16, 64)
    # the kernel accumulates in float32: against SDPA in float32 it is rounding only
    ref32 = decode_attention.attend(q.float(), k.float(), v.float(), pk.float(), pv.float(), pos, shared, keys)
    err = (got.float() - ref32).norm() / ref32.norm()
    assert err < {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype], float(err)
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])
