"""HiFT's Snake activation, x + sin²(αx)/α, as one kernel on a GPU.

The stock ``Snake`` module runs five element-wise kernels (mul, sin, pow, reciprocal,
add), each reading and writing the whole activation: in a batch of 32 vocoder windows
they took more than half of the vocoder's GPU time, the convolutions less
(benchmarks/results/s3gen_profile.md). ``snake`` computes the same formula in one
pass: a Triton kernel on CUDA when Triton is installed, the stock arithmetic
otherwise (CPU, tests). The kernel's integer arguments are not specialised, so one
compilation (at the vocoder's warm-up, before any CUDA graph capture) serves every
shape.
"""

from __future__ import annotations

import torch

EPS = 1e-9  # the stock module's no_div_by_zero

try:  # Triton comes with CUDA builds of torch; a CPU install has none
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


def snake_reference(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The stock arithmetic (hifigan.Snake.forward), x [B, C, T], alpha [C]."""
    a = alpha[None, :, None]
    return x + (1.0 / (a + EPS)) * torch.sin(x * a).pow(2)


if triton is not None:
    @triton.jit(do_not_specialize=["n", "t", "c"])
    def _snake_kernel(x_ptr, a_ptr, y_ptr, n, t, c, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = offs < n
        x = tl.load(x_ptr + offs, mask=live, other=0.0).to(tl.float32)
        a = tl.load(a_ptr + (offs // t) % c, mask=live, other=1.0).to(tl.float32)
        s = tl.sin(x * a)
        y = x + (1.0 / (a + 1e-9)) * (s * s)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=live)


fused = True  # benchmarks switch it off to time the stock arithmetic in the same run


def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Snake over x [B, C, T] with per-channel alpha [C]: fused on a GPU, stock arithmetic elsewhere."""
    if triton is None or not x.is_cuda or not fused:
        return snake_reference(x, alpha)
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    block = 1024
    _snake_kernel[(triton.cdiv(n, block),)](x, alpha.contiguous(), y, n, x.shape[-1], x.shape[1], BLOCK=block)
    return y


def resblock(blk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The stock ``hifigan.ResBlock.forward`` with ``snake`` for its Snake modules."""
    for act1, conv1, act2, conv2 in zip(blk.activations1, blk.convs1, blk.activations2, blk.convs2):
        xt = conv1(snake(x, act1.alpha))
        xt = conv2(snake(xt, act2.alpha))
        x = xt + x
    return x
