"""T3 on the GPU: CUDA-graph steps and prefills against eager, the decode kernel's two paths
(one voice: the shared prefix buffer; mixed voices: each slot's own rows) against each voice
decoded alone, and bfloat16/float16 against float32."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.chatterbox import decode_attention
from engine.chatterbox.random_checkpoint import benchmark_texts
from engine.chatterbox.t3_runner import SamplingParams, T3Runner

from .conftest import DEVICE, ON_GPU

GREEDY = SamplingParams(temperature=1.0, top_k=1, top_p=1.0, repetition_penalty=1.0)
TEXTS = benchmark_texts(64)


def runner(ckpt, dtype, slots=64, graphs=True, sampling=GREEDY) -> T3Runner:
    return T3Runner(ckpt.t3, DEVICE, dtype, max_slots=slots, max_len=1024, sampling=sampling, cuda_graphs=graphs)


def decode(r: T3Runner, groups: list[tuple[list[int], object, list[torch.Tensor]]], steps: int) -> list[list[int]]:
    """Admit each (slots, voice prefix, texts) group, then ``steps`` batched steps: every slot's tokens."""
    for slots, prefix, texts in groups:
        r.admit_many(slots, prefix, texts)
    n = sum(len(s) for s, _, _ in groups)
    out = [[int(t)] for t in r.tokens[:n].tolist()]
    for _ in range(steps):
        for i, t in enumerate(r.step(n).tolist()):
            out[i].append(int(t))
    return out


def other_voice(ckpt):
    return dataclasses.replace(ckpt.conds.t3, speaker_emb=ckpt.conds.t3.speaker_emb.flip(-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_graph_steps_equal_eager_steps(ckpt, dtype):
    """40 slots of one voice (the decode kernel with the shared prefix, from 32 slots): the captured
    step graphs give the eager steps' tokens, step for step. Both runners prefill eagerly, so the
    two start from the same caches. float32: every token equal. bfloat16: cuBLAS may pick another
    algorithm inside a capture, and a last-bit difference can flip a near-tie of greedy decoding
    in some slot; a broken graph (stale inputs, a wrong bucket) changes every slot, so at least
    three quarters of the slots must match exactly."""
    tokens = {}
    for graphs in (True, False):
        r = runner(ckpt, dtype, graphs=graphs)
        assert r.use_graphs == (graphs and ON_GPU)
        r.prefill_buckets = (0,)  # no prefill graph: every text is longer than the largest bucket
        prefix = r.voice_prefix(ckpt.conds.t3)
        tokens[graphs] = decode(r, [(list(range(32)), prefix, TEXTS[:32]), (list(range(32, 40)), prefix, TEXTS[32:40])], 16)
        if graphs and ON_GPU:
            assert r._graphs and decode_attention.available(DEVICE, 40)
            assert any(shared > 0 for (_, _, shared) in r._graphs)  # the shared-prefix kernel path ran
            assert not r._prefill_graphs
        del r
    same = sum(a == b for a, b in zip(tokens[True], tokens[False]))
    print(f"T3 step graphs vs eager, {dtype}: {same}/40 slots identical over 17 tokens")
    if dtype == torch.float32:
        assert tokens[True] == tokens[False]
    assert same >= 30, same


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)], ids=["float32", "bfloat16"])
def test_prefill_graphs_equal_eager_prefill(ckpt, dtype, bound):
    """A batch of 24 texts prefilled by the captured prefill graph (batch and length padded to its
    bucket) and eagerly (exact shapes): the same first-token logits, to rounding."""
    logits = {}
    for graphs in (True, False):
        r = runner(ckpt, dtype, graphs=graphs)
        _, logits[graphs] = r.admit_many(list(range(24)), r.voice_prefix(ckpt.conds.t3), TEXTS[:24])
        if graphs and ON_GPU:
            assert r._prefill_graphs  # the graph path ran
        logits[graphs] = logits[graphs].float()
        del r
    ref = logits[False]
    err = float((logits[True] - ref).norm() / ref.norm())
    print(f"T3 prefill {dtype}, graph vs eager: logits relative error {err:.2e}")
    assert err < bound, err


def test_mixed_voices_in_one_batch_equal_each_voice_alone(ckpt):
    """16 slots of voice A and 16 of voice B in one 32-slot batch (no shared prefix: the kernel reads
    each slot's own rows from 0) decode what each group decodes in a batch of its own (float32;
    other batch shapes round differently in the last bits, which may flip a near-tie in a slot or
    two; a voice mix-up or a wrong row changes every slot of a voice)."""
    b_voice = other_voice(ckpt)
    r = runner(ckpt, torch.float32)
    a, b = r.voice_prefix(ckpt.conds.t3), r.voice_prefix(b_voice)
    mixed = decode(r, [(list(range(16)), a, TEXTS[:16]), (list(range(16, 32)), b, TEXTS[16:32])], 12)
    if ON_GPU:
        assert decode_attention.available(DEVICE, 32) and r._shared_for(32, r._keys_for(32)) == 0
        assert all(shared == 0 for (_, _, shared) in r._graphs)
    del r
    alone = []
    for cond, texts in ((ckpt.conds.t3, TEXTS[:16]), (b_voice, TEXTS[16:32])):
        r = runner(ckpt, torch.float32)
        alone += decode(r, [(list(range(16)), r.voice_prefix(cond), texts)], 12)
        del r
    same = sum(a == b for a, b in zip(mixed, alone))
    print(f"T3 two voices in one batch vs each alone: {same}/32 slots identical over 13 tokens")
    assert same >= 30, same
    assert mixed[:16] != mixed[16:]  # the two voices do decode differently


@pytest.mark.parametrize("dtype,bound", [(torch.bfloat16, 0.1), (torch.float16, 0.02)], ids=["bfloat16", "float16"])
def test_low_precision_logits_follow_float32(ckpt, dtype, bound):
    """The same state in bfloat16/float16: the logits of the first decode step stay within
    ``bound`` (relative norm) of float32's: a wrong cast or an overflow gives ~1 or NaN."""
    logits = {}
    for dt in (torch.float32, dtype):
        r = runner(ckpt, dt, graphs=False)
        decode(r, [(list(range(32)), r.voice_prefix(ckpt.conds.t3), TEXTS[:32])], 1)
        logits[dt] = r.last_logits[:32].float()
        del r
    ref, got = logits[torch.float32], logits[dtype]
    assert torch.isfinite(got).all()
    err = float((got - ref).norm() / ref.norm())
    print(f"T3 {dtype} vs float32: logits relative error {err:.2e}")
    assert err < bound, err
