"""A T3 decode step's attention as one Triton kernel: each slot reads only what it uses.

With SDPA over the static cache, every slot of a step read keys up to the cache
bucket (the longest live slot's position, rounded up to 128), its own copy of the
voice prefix included: at 128 slots on an H100 that was ~3 ms of a 5.3 ms step,
HBM-bound. This kernel (one program per slot and head, online softmax in float32,
no splits: slots x heads programs fill the GPU at the batches that matter) reads

* the voice prefix from one buffer shared by every slot, when all live slots
  speak with one voice: 1.5 MB a layer, served from L2 after the first slot;
* each slot's own positions after the prefix, up to its own position (a
  device-side bound, so one CUDA graph serves every length).

Without a shared prefix (``shared`` = 0: slots of several voices) each slot reads
its whole row from position 0. ``attend`` is SDPA over the slot's own rows (which
hold their own copy of the prefix) where Triton is not available (CPU, tests): the
same attention; on a GPU the two are compared by benchmarks/t3_step.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

try:  # Triton comes with CUDA builds of torch; a CPU install has none
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

BLOCK = 64  # key positions per iteration
# Below this many slots a step keeps SDPA: one program per head reads its slot's positions
# one after the other, slower than SDPA's split over keys (H100, benchmarks/results/t3_step.md:
# 2.2-2.7 vs 2.0-2.1 ms at 1 slot; 1.03-1.06x faster at 32, 1.19-1.32x at 128).
MIN_SLOTS = 32

if triton is not None:
    @triton.jit
    def _attend_block(q, k_ptrs, v_ptrs, live, m_i, l_i, acc):
        """Online softmax over one block of keys: the running max, sum and weighted values."""
        k = tl.load(k_ptrs, mask=live[:, None], other=0.0).to(tl.float32)
        s = tl.where(live, tl.sum(k * q[None, :], 1), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new)
        v = tl.load(v_ptrs, mask=live[:, None], other=0.0).to(tl.float32)
        return m_new, l_i * alpha + tl.sum(p, 0), acc * alpha + tl.sum(p[:, None] * v, 0)

    @triton.jit(do_not_specialize=["shared"])
    def _decode_kernel(q_ptr, k_ptr, v_ptr, pk_ptr, pv_ptr, pos_ptr, o_ptr,
                       sq_n, sq_h, sk_n, sk_h, sk_t, sp_h, sp_t, so_n, so_h,
                       shared, scale, D: tl.constexpr, BLOCK: tl.constexpr):
        n = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1).to(tl.int64)
        d = tl.arange(0, D)
        q = tl.load(q_ptr + n * sq_n + h * sq_h + d).to(tl.float32) * scale
        m_i = tl.full([1], float("-inf"), tl.float32)
        l_i = tl.zeros([1], tl.float32)
        acc = tl.zeros([D], tl.float32)
        for start in range(0, shared, BLOCK):  # the shared voice prefix
            t = start + tl.arange(0, BLOCK)
            at = h * sp_h + t[:, None] * sp_t + d[None, :]
            m_i, l_i, acc = _attend_block(q, pk_ptr + at, pv_ptr + at, t < shared, m_i, l_i, acc)
        end = tl.load(pos_ptr + n) + 1
        for start in range(shared, end, BLOCK):  # the slot's own positions
            t = start + tl.arange(0, BLOCK)
            at = n * sk_n + h * sk_h + t[:, None] * sk_t + d[None, :]
            m_i, l_i, acc = _attend_block(q, k_ptr + at, v_ptr + at, t < end, m_i, l_i, acc)
        tl.store(o_ptr + n * so_n + h * so_h + d, (acc / l_i).to(o_ptr.dtype.element_ty))


fused = True  # benchmarks switch it off to time SDPA in the same run


def available(device: torch.device, slots: int = MIN_SLOTS) -> bool:
    return triton is not None and device.type == "cuda" and fused and slots >= MIN_SLOTS


def sdpa_mask(pos: torch.Tensor, key_index: torch.Tensor) -> torch.Tensor:
    """The SDPA path's key mask [n, 1, 1, keys] for ``key_index`` = arange(keys): one per step,
    shared by every layer."""
    return (key_index[None, :] <= pos[:, None])[:, None, None, :]


def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, prefix_k: torch.Tensor,
           prefix_v: torch.Tensor, pos: torch.Tensor, shared: int, keys: int,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """One query per slot: q [n, H, d]; one layer's cache [slots, H, L, d]; the shared prefix
    [H, L, d] (positions < ``shared``; 0: none); pos [n] each slot's current position, its
    last key. Returns [n, H, d]. ``keys`` bounds every pos (the SDPA path reads that many);
    ``mask``: the SDPA path's ``sdpa_mask`` when the caller has it (else made here)."""
    n, h, d = q.shape
    if not available(q.device, n):
        if mask is None:
            mask = sdpa_mask(pos, torch.arange(keys, device=q.device))
        return F.scaled_dot_product_attention(q[:, :, None, :], k_cache[:n, :, :keys], v_cache[:n, :, :keys],
                                              attn_mask=mask)[:, :, 0]
    out = torch.empty(n, h, d, device=q.device, dtype=q.dtype)
    _decode_kernel[(n, h)](q, k_cache, v_cache, prefix_k, prefix_v, pos, out,
                           q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
                           prefix_k.stride(0), prefix_k.stride(1), out.stride(0), out.stride(1),
                           shared, 1.0 / math.sqrt(d), D=d, BLOCK=BLOCK)
    return out
