"""Our Chatterbox Turbo inference path against the stock classes, on the CPU, random weights.

The checkpoint is written by the test in the public file layout (a narrow 4-layer
T3; S3Gen and the voice encoder at full size) and loaded through the same code
the server uses.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.base import EngineError, VoiceSpec  # noqa: E402
from engine.chatterbox.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from engine.chatterbox.engine import LEAD_ZEROS  # noqa: E402
from engine.chatterbox.random_checkpoint import link_copy  # noqa: E402
from engine.chatterbox.s3gen_streamer import (  # noqa: E402
    SAMPLES_PER_FRAME, FlowJob, S3GenStreamer,
)
from engine.chatterbox.t3_runner import SamplingParams, T3Runner  # noqa: E402

GREEDY = SamplingParams(temperature=1.0, top_k=1, top_p=1.0, repetition_penalty=1.0)
# watermark, start-up checks and long-text splitting are tested in test_chatterbox_verify.py
FAST = dict(watermark=False, startup_checks=False, text_budget=10_000)


@pytest.fixture(scope="module")
def ckpt_dir(random_checkpoint):
    return random_checkpoint(4, 256, 3)


@pytest.fixture(scope="module")
def ckpt(ckpt_dir):
    return load_checkpoint(ckpt_dir)


def text_ids(ckpt, text):
    return ckpt.tokenizer(text, return_tensors="pt").input_ids


# -- loading ------------------------------------------------------------------------
def test_missing_file_is_named(ckpt_dir, tmp_path):
    bad = link_copy(ckpt_dir, tmp_path / "ckpt")
    (bad / "ve.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"ve\.safetensors: missing checkpoint file"):
        load_checkpoint(bad)


def test_missing_tensor_is_named(ckpt_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = link_copy(ckpt_dir, tmp_path / "ckpt")
    state = load_file(str(bad / "t3_turbo_v1.safetensors"))
    del state["tfmr.h.2.attn.c_proj.weight"]
    (bad / "t3_turbo_v1.safetensors").unlink()  # a hard link to the shared checkpoint's file
    save_file(state, str(bad / "t3_turbo_v1.safetensors"))
    with pytest.raises(CheckpointError, match=r"t3_turbo_v1\.safetensors: missing tensor\(s\) tfmr\.h\.2\.attn\.c_proj\.weight"):
        load_checkpoint(bad)


def test_corrupt_file_is_named(ckpt_dir, tmp_path):
    bad = link_copy(ckpt_dir, tmp_path / "ckpt")
    (bad / "s3gen_meanflow.safetensors").unlink()  # a hard link to the shared checkpoint's file
    (bad / "s3gen_meanflow.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"s3gen_meanflow\.safetensors: cannot read"):
        load_checkpoint(bad)


# -- T3 -----------------------------------------------------------------------------
def _stock_logits(t3, cond, ids, generated):
    """Stock HF GPT-2 forward over the prompt + start token + generated tokens: logits at each step."""
    with torch.inference_mode():
        speech = torch.tensor([[6561] + generated[:-1]])
        emb, _ = t3.prepare_input_embeds(t3_cond=cond, text_tokens=ids, speech_tokens=speech)
        hidden = t3.tfmr(inputs_embeds=emb)[0]
        return t3.speech_head(hidden[0, -len(generated):])


def test_batched_prefill_equals_one_at_a_time(ckpt):
    """Texts of different lengths prefilled together: same logits and same next steps as alone."""
    t3, cond = ckpt.t3, ckpt.conds.t3
    texts = ["Hello.", "Your appointment is on Tuesday at nine.", "Press one to repeat this message, or two."]
    ids = [text_ids(ckpt, t)[0] for t in texts]
    together = T3Runner(t3, "cpu", torch.float32, max_slots=4, max_len=512, sampling=GREEDY)
    prefix = together.voice_prefix(cond)
    _, logits = together.admit_many([0, 1, 2], prefix, ids)
    steps = [together.step(3).tolist() for _ in range(5)]
    for row, one in enumerate(ids):
        alone = T3Runner(t3, "cpu", torch.float32, max_slots=4, max_len=512, sampling=GREEDY)
        _, lg = alone.admit(0, alone.voice_prefix(cond), one)
        assert torch.allclose(lg, logits[row], atol=1e-4)
        assert [alone.step(1).tolist()[0] for _ in range(5)] == [s[row] for s in steps]


def test_steps_reading_only_the_live_cache_length_equal_full_reads(ckpt):
    """Attention over the first L cache positions (L covering every live slot) == over all of them."""
    ids = [text_ids(ckpt, t)[0] for t in ("Hello.", "Your appointment is on Tuesday at nine.")]
    runs = []
    for key_step in (64, 2048):  # 64: reads 448..512 of 2,048 positions; 2048: the whole cache
        r = T3Runner(ckpt.t3, "cpu", torch.float32, max_slots=4, max_len=2048, sampling=GREEDY)
        r.key_step = key_step
        r.admit_many([0, 1], r.voice_prefix(ckpt.conds.t3), ids)
        runs.append(([r.step(2).tolist() for _ in range(70)], r.last_logits.clone(), r._keys_for(2)))
    assert runs[0][2] < 2048 and runs[1][2] == 2048
    assert runs[0][0] == runs[1][0]
    assert torch.allclose(runs[0][1], runs[1][1], atol=1e-4)


def test_a_step_shares_the_voice_prefix_only_while_every_live_slot_speaks_with_that_voice(ckpt):
    """The decode kernel (GPU) reads one prefix for all slots: which steps may, and the buffer it reads.
    (On a CPU the attention itself is SDPA over each slot's own copy; the kernel is compared with
    it on the GPU by benchmarks/t3_step.py.)"""
    import dataclasses

    other = dataclasses.replace(ckpt.conds.t3, speaker_emb=ckpt.conds.t3.speaker_emb.flip(-1))
    r = T3Runner(ckpt.t3, "cpu", torch.float32, max_slots=4, max_len=1024, sampling=GREEDY)
    r._shared_kv = torch.zeros(r.n_layer, 2, r.n_head, r.max_len, r.head_dim)  # as on a GPU
    a, b = r.voice_prefix(ckpt.conds.t3), r.voice_prefix(other)
    ids = [text_ids(ckpt, t)[0] for t in ("Hello.", "Press one.")]
    r.admit_many([0, 1], a, ids)
    assert r._shared_for(2, r._keys_for(2)) == a.length
    assert torch.equal(r._shared_kv[:, :, :, :a.length], a.kv)
    r.admit(2, b, ids[0])
    assert r._shared_for(3, r._keys_for(3)) == 0  # two voices: each slot reads its own copy
    r.move_slot(2, 0, int(r.positions[2]) + 1)  # slot 0 ends; the last slot (voice b) moves down
    r.move_slot(1, 1, int(r.positions[1]) + 1)
    assert r._shared_for(1, r._keys_for(1)) == b.length and torch.equal(r._shared_kv[:, :, :, :b.length], b.kv)
    assert r._shared_for(2, r._keys_for(2)) == 0


def test_idle_slots_in_a_bucket_stay_inside_the_cache(ckpt):
    """Slots past the live ones step with the bucket; thousands of steps never index past the cache."""
    p = T3Runner(ckpt.t3, "cpu", torch.float32, max_slots=1, max_len=512).voice_prefix(ckpt.conds.t3).length
    r = T3Runner(ckpt.t3, "cpu", torch.float32, max_slots=4, max_len=p + 20, sampling=GREEDY)
    r.admit(0, r.voice_prefix(ckpt.conds.t3), text_ids(ckpt, "Hi.")[0])
    for _ in range(p + 40):  # bucket 4 for 3 live slots: slot 3 idle, every step
        r.step(3)
    assert int(r.positions.max()) == p + 19


@pytest.mark.parametrize("penalty", [1.0, 1.2])
def test_greedy_tokens_and_logits_match_stock_for_30_steps(ckpt, penalty):
    t3, cond = ckpt.t3, ckpt.conds.t3
    ids = text_ids(ckpt, "Hi, this is Sarah from customer service. How can I help you today?")
    torch.manual_seed(0)
    stock = t3.inference_turbo(cond, ids, temperature=1.0, top_k=1, top_p=1.0, repetition_penalty=penalty,
                               max_gen_len=29)[0].tolist()
    params = SamplingParams(1.0, 1, 1.0, penalty)
    runner = T3Runner(t3, "cpu", torch.float32, max_slots=4, max_len=512, sampling=params)
    prefix = runner.voice_prefix(cond)
    _, first_logits = runner.admit(1, prefix, ids[0])
    ours = [int(runner.tokens[1])]
    logits = [first_logits]
    for _ in range(29):
        ours.append(int(runner.step(2)[1]))
        logits.append(runner.last_logits[1])
    assert len(stock) == 30
    assert ours == stock
    ref = _stock_logits(t3, cond, ids, ours)
    ours_logits = torch.stack(logits)
    err = (ours_logits - ref).abs().max().item()
    assert err < 1e-4 * ref.abs().max().item(), err


def test_continuous_batching_matches_decoding_alone(ckpt):
    t3, cond = ckpt.t3, ckpt.conds.t3
    texts = ["Hello there.", "Your appointment is tomorrow.", "Press one for sales, two for support."]

    def alone(text, steps):
        r = T3Runner(t3, "cpu", torch.float32, max_slots=4, max_len=512, sampling=GREEDY)
        r.admit(0, r.voice_prefix(cond), text_ids(ckpt, text)[0])
        out = [int(r.tokens[0])]
        for _ in range(steps):
            out.append(int(r.step(1)[0]))
        return out

    r = T3Runner(t3, "cpu", torch.float32, max_slots=4, max_len=512, sampling=GREEDY)
    prefix = r.voice_prefix(cond)
    got: dict[int, list[int]] = {}
    r.admit(0, prefix, text_ids(ckpt, texts[0])[0])
    got[0] = [int(r.tokens[0])]
    for step in range(12):
        if step == 4:  # a new utterance joins between steps
            r.admit(1, prefix, text_ids(ckpt, texts[1])[0])
            got[1] = [int(r.tokens[1])]
        if step == 6:
            r.admit(2, prefix, text_ids(ckpt, texts[2])[0])
            got[2] = [int(r.tokens[2])]
        new = r.step(len(got))
        for i in got:
            got[i].append(int(new[i]))
    # utterance 0 leaves: utterance 2 moves down into its slot and goes on
    r.move_slot(2, 0, int(r.positions[2]))
    for _ in range(3):
        got[2].append(int(r.step(2)[0]))
    assert got[0] == alone(texts[0], 12)
    assert got[1] == alone(texts[1], 8)
    assert got[2] == alone(texts[2], len(got[2]) - 1)


def test_sampling_follows_the_stock_chain():
    """Our batched sampler draws from the distribution of transformers' processor chain, penalty
    included. The logits are built so that the penalty moves the distribution by far more than
    the sampling noise (and the draws are seeded, so every run is the same): a sampler that leaves
    the penalty out fails the comparison, and the test checks that it would."""
    from engine.chatterbox.t3_runner import sample_tokens
    from transformers.generation.logits_process import (
        LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
        TopPLogitsWarper,
    )

    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 500, generator=gen) * 0.5
    # Row 0: token 0 (generated before) leads token 1 (not) before the penalty (x / 1.2) and trails
    # it after; row 1: the same with negative logits (x * 1.2); row 2: no overlap with its history.
    logits[0] -= 2.0
    logits[0, :2] = torch.tensor([4.0, 3.5])
    logits[1] -= 15.0
    logits[1, :2] = torch.tensor([-4.0, -4.5])
    history = torch.stack([torch.tensor([0, 7, 9, 11] * 5), torch.tensor([0, 7, 9, 11] * 5),
                           torch.arange(400, 420)])
    seen = torch.zeros(3, 500, dtype=torch.bool)
    seen.scatter_(1, history, True)

    def chain(penalty):
        steps = [TemperatureLogitsWarper(0.8), TopKLogitsWarper(50), TopPLogitsWarper(0.9)]
        return LogitsProcessorList(steps + [RepetitionPenaltyLogitsProcessor(penalty)] if penalty else steps)

    expected = chain(1.2)(history, logits.clone()).softmax(-1)
    unpenalised = chain(None)(history, logits.clone()).softmax(-1)
    assert (expected - unpenalised).abs().max() > 0.15  # the penalty matters here: the check below can fail
    params = SamplingParams(0.8, 50, 0.9, 1.2)
    torch.manual_seed(1)
    counts = torch.zeros(3, 500)
    for _ in range(4000):
        tok = sample_tokens(logits, seen, params)
        counts[torch.arange(3), tok] += 1
    freq = counts / counts.sum(1, keepdim=True)
    assert (freq[expected == 0] == 0).all()  # never outside the top-k/top-p set
    # 4,000 draws: a frequency's standard deviation is at most 0.008, so 0.03 is > 3.5 sigma
    assert (freq - expected).abs().max() < 0.03, (freq - expected).abs().max()
    assert (freq - unpenalised).abs().max() > 0.1  # and the sampler is not the unpenalised chain



def _two_sort_chain(logits, seen, temperature, top_k, top_p, penalty):
    """The per-row chain as first written (33f6620): a descending sort for top-k's k-th value,
    then an ascending sort of the top-k row for top-p (stable sorts: ties in index order)."""
    x = logits.float() / temperature[:, None]
    v = x.size(-1)
    kth = torch.sort(x, dim=-1, descending=True, stable=True).values.gather(1, (top_k.clamp(1, v) - 1)[:, None])
    x = x.masked_fill(x < kth, float("-inf"))
    sorted_x, order = torch.sort(x, dim=-1, descending=False, stable=True)
    remove = (sorted_x.softmax(-1).cumsum(-1) <= (1.0 - top_p)[:, None]) & (top_p < 1.0)[:, None]
    remove[:, -1] = False
    x = x.scatter(1, order, sorted_x.masked_fill(remove, float("-inf")))
    return torch.where(seen, torch.where(x < 0, x * penalty[:, None], x / penalty[:, None]), x)


def _row_settings(rows):
    """Per-row settings that reach every branch: top-k 1 (greedy), 50, 1000, all; top-p off, 0.5, 0.95."""
    top_k = torch.tensor([1, 50, 1000, 6561, 50, 1000, 6561, 20])[torch.arange(rows) % 8]
    top_p = torch.tensor([1.0, 0.5, 0.95, 0.95, 1.0, 0.9, 0.5, 0.95])[torch.arange(rows) % 8]
    temperature = torch.tensor([0.8, 1.0, 0.5, 1.3])[torch.arange(rows) % 4]
    penalty = torch.tensor([1.2, 1.0, 2.0])[torch.arange(rows) % 3]
    return temperature, top_k, top_p, penalty


def test_one_sort_filter_equals_the_two_sort_chain_with_ties():
    """``filter_rows`` sorts once where the chain sorts twice: the same logits, bit for bit, for
    every row's own settings, on bfloat16-rounded logits (many ties, as T3 in bfloat16 gives) and
    on continuous ones; and the draws from the same noise are the same tokens."""
    from engine.chatterbox.t3_runner import filter_rows, sample_rows, seeded_exponential

    gen = torch.Generator().manual_seed(5)
    rows, vocab = 24, 6561
    temperature, top_k, top_p, penalty = _row_settings(rows)
    seen = torch.rand(rows, vocab, generator=gen) < 0.01
    for scale, tied in ((3.0, True), (3.0, False), (0.05, True)):
        logits = torch.randn(rows, vocab, generator=gen) * scale
        if tied:
            logits = logits.to(torch.bfloat16).float()
            assert logits[0].unique().numel() < vocab // 2  # ties everywhere, the boundaries included
        want = _two_sort_chain(logits, seen, temperature, top_k, top_p, penalty)
        got = filter_rows(logits, seen, temperature, top_k, top_p, penalty)
        assert torch.equal(torch.isinf(got), torch.isinf(want))
        assert torch.equal(got, want)
        assert torch.isfinite(got).sum(1).min() >= 1
        noise = seeded_exponential(torch.arange(rows), torch.full((rows,), 7), vocab)
        assert torch.equal(sample_rows(logits, seen, temperature, top_k, top_p, penalty, noise),
                           torch.argmax(want.softmax(-1) / noise, -1))


def test_one_sort_filter_keeps_what_transformers_keeps():
    """Each row of ``filter_rows`` against transformers' processor chain with that row's settings
    (continuous logits: no ties at a boundary): the same tokens kept, the same logits."""
    from engine.chatterbox.t3_runner import filter_rows
    from transformers.generation.logits_process import (
        LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
        TopPLogitsWarper,
    )

    gen = torch.Generator().manual_seed(6)
    rows, vocab = 16, 6561
    temperature, top_k, top_p, penalty = _row_settings(rows)
    logits = torch.randn(rows, vocab, generator=gen) * 2.0
    history = torch.randint(0, vocab, (rows, 40), generator=gen)
    seen = torch.zeros(rows, vocab, dtype=torch.bool).scatter_(1, history, True)
    got = filter_rows(logits, seen, temperature, top_k, top_p, penalty)
    for i in range(rows):
        steps = [TemperatureLogitsWarper(float(temperature[i])), TopKLogitsWarper(int(top_k[i]))]
        if top_p[i] < 1.0:
            steps.append(TopPLogitsWarper(float(top_p[i])))
        steps.append(RepetitionPenaltyLogitsProcessor(float(penalty[i])))
        want = LogitsProcessorList(steps)(history[i:i + 1], logits[i:i + 1].clone())[0]
        assert torch.equal(torch.isinf(got[i]), torch.isinf(want)), i
        kept = torch.isfinite(want)
        assert torch.allclose(got[i][kept], want[kept], rtol=1e-6, atol=1e-6), i


# -- S3Gen + HiFT -------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_case(ckpt):
    s3 = ckpt.s3gen
    gen = ckpt.conds.gen
    n = 70
    tokens = torch.randint(0, 6561, (n,), generator=torch.Generator().manual_seed(5))
    tp = gen["prompt_token"].shape[1]
    torch.manual_seed(7)
    z = torch.randn(1, 80, 2 * (tp + n))
    streamer = S3GenStreamer(s3, "cpu", reference_cache=False)  # stock's full attention, for the exact checks
    voice = streamer.prepare_voice(gen)
    voice.prompt_noise = z[0, :, :2 * tp].clone()  # the noise stock draws for the reference part
    utt = streamer.new_utterance(voice, 11, n)
    torch.manual_seed(7)
    with torch.inference_mode():
        mel, _ = s3.flow.inference(
            token=tokens[None], token_len=torch.tensor([n]), prompt_token=gen["prompt_token"],
            prompt_token_len=gen["prompt_token_len"], prompt_feat=gen["prompt_feat"], prompt_feat_len=None,
            embedding=gen["embedding"], finalize=True, n_timesteps=2, noised_mels=utt.noise[:, :2 * n][None],
            meanflow=True)
        src = streamer.source_for(s3.mel2wav.f0_predictor(mel), [streamer.new_utterance(voice, 11, n)], [0])
        audio = s3.mel2wav.decode(x=mel, s=src)[0]
        audio[:960] *= torch.from_numpy(streamer.trim_fade)
    return streamer, voice, tokens, mel[0], audio.numpy()


def test_whole_utterance_flow_equals_stock(s3_case):
    streamer, voice, tokens, ref_mel, _ = s3_case
    utt = streamer.new_utterance(voice, 11, tokens.numel())
    (mel,) = streamer.flow_batch([FlowJob(utt, tokens, True)])
    assert mel.shape == ref_mel.shape
    assert (mel - ref_mel).abs().max() < 1e-4


def snr_db(ref, x):
    ref = np.asarray(ref, dtype=np.float64)
    err = ref - np.asarray(x, dtype=np.float64)
    return 10 * np.log10((ref ** 2).sum() / max((err ** 2).sum(), 1e-30))


def stream_windows(streamer, voice, tokens, windows):
    utt = streamer.new_utterance(voice, 11, tokens.numel())
    chunks = []
    for n in windows:
        final = n == tokens.numel()
        streamer.flow_batch([FlowJob(utt, tokens[:n], final)])
        chunks.append(streamer.vocode([utt], [final])[0])
    return utt, chunks


@pytest.mark.parametrize("cached", [False, True], ids=["full-attention", "reference-cache"])
def test_streaming_windows_against_whole_utterance(s3_case, ckpt, cached, capsys):
    """Streaming (windows 10, 25, rest) vs stock's whole utterance: SNR >= 20 dB, no clicks at joins.

    full-attention: every window re-runs the reference and all tokens so far (stock attention);
    reference-cache: the production path (block-causal reference computed once per voice,
    25 tokens of context before each window's new ones).
    """
    streamer, voice, tokens, ref_mel, ref_audio = s3_case
    if cached:
        streamer = S3GenStreamer(ckpt.s3gen, "cpu", reference_cache=True)
        noise = voice.prompt_noise
        voice = streamer.prepare_voice(ckpt.conds.gen)
        assert voice.tapes is not None
        voice.prompt_noise = noise
        from engine.chatterbox.flow_cache import record_voice
        mu = streamer._encode([voice.prompt_token])[0]
        voice.tapes = record_voice(streamer.flow.decoder.estimator, noise, mu, voice.spk, voice.prompt_feat.t())
    utt, chunks = stream_windows(streamer, voice, tokens, [13, 38, tokens.numel()])
    audio = np.concatenate(chunks)
    assert len(audio) == len(ref_audio) == ref_mel.shape[1] * SAMPLES_PER_FRAME
    mel_snr = snr_db(ref_mel.numpy(), torch.cat(utt.mel, 1).numpy())
    audio_snr = snr_db(ref_audio, audio)
    with capsys.disabled():
        print(f"\nstreaming ({'reference cache' if cached else 'full attention'}) vs whole utterance "
              f"(random weights): mel SNR {mel_snr:.1f} dB, audio SNR {audio_snr:.1f} dB")
    assert audio_snr >= 20.0
    # no click at the joins: the step across each join is within the signal's own sample-to-sample steps
    steps = np.abs(np.diff(audio))
    joins = np.cumsum([len(c) for c in chunks])[:-1]
    typical = np.percentile(steps, 99.9)
    for j in joins:
        assert steps[j - 1] <= typical, (j, steps[j - 1], typical)


def test_reference_cache_equals_block_causal_full_pass(ckpt):
    """Generated frames from the voice's tapes == the full sequence with a block-causal mask."""
    from engine.chatterbox.flow_cache import solve_meanflow_cached
    from engine.chatterbox.s3gen_streamer import estimator_forward

    streamer = S3GenStreamer(ckpt.s3gen, "cpu", reference_cache=True)
    voice = streamer.prepare_voice(ckpt.conds.gen)
    est = streamer.flow.decoder.estimator
    g = torch.Generator().manual_seed(9)
    tg = 37
    z = torch.randn(2, 80, tg, generator=g)
    mu_gen = torch.randn(2, 80, tg, generator=g)
    mask = torch.ones(2, 1, tg)
    mask[1, :, 30:] = 0  # a shorter second item: padding must be masked exactly
    spks = voice.spk[None].expand(2, -1)
    with torch.inference_mode():
        ours = solve_meanflow_cached(est, voice.tapes, z, mask, mu_gen, spks)
        mu_ref = streamer._encode([voice.prompt_token])[0]
        tr = mu_ref.shape[1]
        for row, length in ((0, tg), (1, 30)):
            x = torch.cat([voice.prompt_noise, z[row, :, :length]], 1)[None]
            mu = torch.cat([mu_ref, mu_gen[row, :, :length]], 1)[None]
            cond = torch.cat([voice.prompt_feat.t(), torch.zeros(80, length)], 1)[None]
            t_all = tr + length
            bias = torch.zeros(1, t_all, t_all)
            bias[:, :tr, tr:] = -1.0e10  # the reference sees only itself
            full_mask = torch.ones(1, 1, t_all)
            for i in range(2):
                t = torch.full((1,), i / 2)
                r = torch.full((1,), (i + 1) / 2)
                x = x + 0.5 * estimator_forward(est, x, full_mask, mu, t, spks[:1], cond, r, bias)
            assert torch.allclose(ours[row, :, :length], x[0, :, tr:], atol=1e-4), (ours[row, :, :length] - x[0, :, tr:]).abs().max()


def test_reference_key_buffers_equal_concatenation(ckpt):
    """The graphs' path (reference keys written once into buffers, padded) == concatenating them each time."""
    import copy as _copy

    from engine.chatterbox.flow_cache import solve_meanflow_cached

    streamer = S3GenStreamer(ckpt.s3gen, "cpu", reference_cache=True)
    voice = streamer.prepare_voice(ckpt.conds.gen)
    est = streamer.flow.decoder.estimator
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, 80, 24, generator=g)
    mu = torch.randn(3, 80, 24, generator=g)
    mask = torch.ones(3, 1, 24)
    mask[2, :, 17:] = 0
    spks = voice.spk[None].expand(3, -1)
    padded = [t.padded(voice.tapes[0].frames + 12) for t in voice.tapes]
    with torch.inference_mode():
        plain = solve_meanflow_cached(est, padded, z, mask, mu, spks)
        buffered = [_copy.copy(t) for t in padded]
        for t in buffered:
            t.attach_buffers(batch=4, frames=32)  # more rows and frames than this batch uses
            t.buffers[0][0][3].fill_(7.0)  # rows past the batch are never read
        ours = solve_meanflow_cached(est, buffered, z, mask, mu, spks)
        again = solve_meanflow_cached(est, buffered, z, mask, mu, spks)  # the buffers' tails are overwritten
    assert torch.allclose(ours, plain, atol=1e-5), (ours - plain).abs().max()
    assert torch.equal(ours, again)


def test_windows_of_different_utterances_batch_like_alone(s3_case):
    streamer, voice, tokens, _, _ = s3_case
    a = streamer.new_utterance(voice, 21, 70)
    b = streamer.new_utterance(voice, 22, 70)
    streamer.flow_batch([FlowJob(a, tokens[:20], False), FlowJob(b, tokens[:45], False)])
    batched = (torch.cat(a.mel, 1), torch.cat(b.mel, 1))
    a2 = streamer.new_utterance(voice, 21, 70)
    b2 = streamer.new_utterance(voice, 22, 70)
    streamer.flow_batch([FlowJob(a2, tokens[:20], False)])
    streamer.flow_batch([FlowJob(b2, tokens[:45], False)])
    assert torch.allclose(batched[0], torch.cat(a2.mel, 1), atol=1e-4)
    assert torch.allclose(batched[1], torch.cat(b2.mel, 1), atol=1e-4)
    # the vocoder: windows of different lengths in one padded batch give what each gives alone
    together = streamer.vocode([a, b], [False, False])
    alone = streamer.vocode([a2], [False])[0], streamer.vocode([b2], [False])[0]
    for x, y in zip(together, alone):
        assert x.shape == y.shape and x.size > 0
        assert np.abs(x - y).max() < 1e-4, np.abs(x - y).max()


def test_vocoder_stft_and_decode_equal_stock(ckpt):
    """The capturable DFT16 STFT/iSTFT and HiFT decode == torch.stft/istft and the stock decode."""
    from engine.chatterbox.vocoder import Vocoder, hift_decode

    hift = ckpt.s3gen.mel2wav
    voc = Vocoder(hift, torch.device("cpu"), torch.zeros(9, 4800))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4000, generator=g)
    window = voc.dft.win_sq.sqrt()
    ref = torch.view_as_real(torch.stft(x, 16, 4, 16, window=window, return_complex=True))
    ours = voc.dft.stft(x)
    assert torch.allclose(ours[:, :9], ref[..., 0], atol=1e-5) and torch.allclose(ours[:, 9:], ref[..., 1], atol=1e-5)
    back = voc.dft.istft(ours)
    assert torch.allclose(back, torch.istft(torch.complex(ref[..., 0], ref[..., 1]), 16, 4, 16, window=window),
                          atol=1e-5)
    assert torch.allclose(back, x, atol=1e-4)  # and it inverts
    mel = torch.randn(2, 80, 40, generator=g) - 4
    s = torch.randn(2, 1, 40 * SAMPLES_PER_FRAME, generator=g) * 0.1
    with torch.inference_mode():
        assert torch.allclose(hift_decode(hift, voc.dft, mel, s), hift.decode(x=mel, s=s), atol=1e-4)


def test_snake_equals_stock_module():
    """Our Snake (fused kernel on a GPU, where there is one) == the stock module, odd shapes included."""
    from chatterbox.models.s3gen.hifigan import Snake

    from engine.chatterbox.snake import snake

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(2)
    for shape in ((2, 64, 1000), (3, 7, 33), (1, 512, 17)):
        stock = Snake(shape[1]).to(device)
        with torch.no_grad():
            stock.alpha.copy_(torch.rand(shape[1], generator=g) * 3 + 0.05)
        x = (torch.randn(*shape, generator=g) * 4).to(device)
        with torch.inference_mode():
            assert torch.allclose(snake(x, stock.alpha), stock(x), atol=1e-5, rtol=1e-5)


def test_encoder_without_host_syncs_equals_stock(ckpt):
    """encode_tokens (the path the encoder graphs capture) == the stock encoder, padded batch."""
    from engine.chatterbox.flow_encoder import encode_tokens

    flow = ckpt.s3gen.flow
    g = torch.Generator().manual_seed(6)
    tokens = torch.randint(0, 6561, (2, 40), generator=g)
    lens = torch.tensor([40, 29])
    tokens[1, 29:] = 0
    with torch.inference_mode():
        ours = encode_tokens(flow, tokens, lens)
        for row, n in enumerate(lens.tolist()):
            h, _ = flow.encoder(flow.input_embedding(tokens[row:row + 1, :n]), torch.tensor([n]))
            stock = flow.encoder_proj(h).transpose(1, 2)[0]
            assert torch.allclose(ours[row, :, :2 * n], stock, atol=1e-4), (ours[row, :, :2 * n] - stock).abs().max()


def _stock_window(flow, ref_tokens, win):
    """A window's ``mu`` by the stock modules: the reference encoded alone gives each layer's
    ``att_cache``; the window's rows run the stock layers with it and the joint sequence's
    positional encoding, after the joint lookahead and upsampling convolutions."""
    enc = flow.encoder
    r, t = ref_tokens.numel(), ref_tokens.numel() + win.numel()

    def ones(n):
        return torch.ones(1, 1, n, dtype=torch.bool)

    def up(x):
        return enc.up_layer(x.transpose(1, 2).contiguous(), torch.zeros(1))[0].transpose(1, 2)

    xs, pos, _ = enc.embed(flow.input_embedding(torch.cat([ref_tokens, win])[None]), ones(t))
    xr, pos_r, _ = enc.embed(flow.input_embedding(ref_tokens[None]), ones(r))
    xw = enc.pre_lookahead_layer(xs)[:, r:]
    xr = enc.pre_lookahead_layer(xr)
    for layer in enc.encoders:
        xr_next, _, cache, _ = layer(xr, ones(r), pos_r, ones(r))
        xw = layer(xw, ones(t), pos, ones(t), att_cache=cache)[0]
        xr = xr_next
    uw, pos2, _ = enc.up_embed(up(torch.cat([xr, xw], dim=1)), ones(2 * t))
    uw = uw[:, 2 * r:]
    ur, pos_r2, _ = enc.up_embed(up(xr), ones(2 * r))
    for layer in enc.up_encoders:
        ur_next, _, cache, _ = layer(ur, ones(2 * r), pos_r2, ones(2 * r))
        uw = layer(uw, ones(2 * t), pos2, ones(2 * t), att_cache=cache)[0]
        ur = ur_next
    return flow.encoder_proj(enc.after_norm(uw)).transpose(1, 2)[0]


def test_window_encoder_equals_stock_layers_with_the_reference_as_their_cache(ckpt):
    """Windows (padded batch, reference left-padded) == the stock layers given the reference's keys/values."""
    from engine.chatterbox.flow_encoder import encode_reference, encode_window

    flow = ckpt.s3gen.flow
    g = torch.Generator().manual_seed(8)
    ref_tokens = torch.randint(0, 6561, (37,), generator=g)
    windows = torch.randint(0, 6561, (2, 21), generator=g)
    lens = [21, 14]
    windows[1, 14:] = 0
    with torch.inference_mode():
        ref = encode_reference(flow, ref_tokens, pad_to=48)
        ours = encode_window(flow, ref, windows, torch.tensor(lens))
        for row, n in enumerate(lens):
            stock = _stock_window(flow, ref_tokens, windows[row, :n])
            err = (ours[row, :, :2 * n] - stock).abs().max().item()
            assert err < 1e-4 * max(1.0, stock.abs().max().item()), err


# -- the engine ---------------------------------------------------------------------
def test_engine_streams_chunks_and_cancels(ckpt_dir):
    from engine.chatterbox.engine import ChatterboxEngine, ChatterboxOptions

    async def main():
        engine = ChatterboxEngine(ChatterboxOptions(str(ckpt_dir), device="cpu", dtype="float32", max_streams=4,
                                                    max_len=512, max_tokens=40, **FAST))
        await engine.start()
        chunks = [c async for c in engine.stream("Hello there.", VoiceSpec())]
        stream = engine.stream("Please hold the line.", VoiceSpec())
        first = await stream.__anext__()
        await stream.aclose()  # the caller hung up
        for _ in range(100):
            if engine._scheduler.stats.cancelled:
                break
            await asyncio.sleep(0.05)
        stats = engine._scheduler.stats
        await engine.close()
        return chunks, first, stats

    chunks, first, stats = asyncio.run(main())
    audio = np.concatenate(chunks)
    assert len(chunks) >= 2  # streamed in windows, not one blob
    # 40 tokens (start/stop blocked) + 3 silence tokens, less the stock fade's zeroed 20 ms at the stream's start
    assert len(audio) == (40 + 3) * 2 * SAMPLES_PER_FRAME - LEAD_ZEROS
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert len(first) > 0 and stats.cancelled == 1


def test_a_lower_precision_vocoder_is_checked_on_the_reference_and_refused_when_far(ckpt_dir):
    """The start-up check vocodes the voice's reference mel both ways; bfloat16 (about 30 dB from
    float32 with these weights) is refused and the engine speaks with a float32 vocoder."""
    from engine.chatterbox.engine import MIN_VOCODER_SNR_DB, ChatterboxEngine, ChatterboxOptions

    async def main():
        engine = ChatterboxEngine(ChatterboxOptions(str(ckpt_dir), device="cpu", dtype="float32", max_streams=2,
                                                    max_len=512, max_tokens=20, vocoder_dtype="bfloat16",
                                                    watermark=False, text_budget=10_000))
        await engine.start()
        chunks = [c async for c in engine.stream("Hello.", VoiceSpec())]
        streamer = engine._scheduler.streamer
        await engine.close()
        return engine.vocoder_snr_db, streamer, chunks

    snr, streamer, chunks = asyncio.run(main())
    assert 10 < snr < MIN_VOCODER_SNR_DB
    assert streamer.hift_dtype == torch.float32 and streamer.vocoder.dtype == torch.float32
    assert np.isfinite(np.concatenate(chunks)).all()
    assert streamer.vocoder_snr_db(load_checkpoint(ckpt_dir).conds.gen["prompt_feat"]) == float("inf")  # float32 vs itself


def test_a_burst_of_callers_is_prefilled_in_few_batches_and_a_lone_one_at_once(ckpt_dir):
    """Admission: the first caller is prefilled alone, at once; six arriving 15 ms apart while it
    speaks wait in the lobby and are prefilled together (not six prefills while the first
    caller's audio runs)."""
    from engine.chatterbox.engine import ChatterboxEngine, ChatterboxOptions

    async def main():
        engine = ChatterboxEngine(ChatterboxOptions(str(ckpt_dir), device="cpu", dtype="float32", max_streams=8,
                                                    max_len=512, max_tokens=30, **FAST))
        await engine.start()
        st = engine._scheduler.stats
        first = engine.stream("Hello there.", VoiceSpec())
        t0 = asyncio.get_running_loop().time()
        await first.__anext__()
        alone = (st.prefills, st.admitted, asyncio.get_running_loop().time() - t0)

        async def play(text, delay):
            await asyncio.sleep(delay)
            return sum([c.size async for c in engine.stream(text, VoiceSpec())])

        burst = [asyncio.ensure_future(play(f"Caller number {i} is on the line.", 0.015 * i)) for i in range(6)]
        sizes = await asyncio.gather(*burst)
        async for _ in first:
            pass
        out = alone, (st.prefills, st.admitted), sizes
        await engine.close()
        return out

    (p_alone, a_alone, _), (prefills, admitted), sizes = asyncio.run(main())
    assert (p_alone, a_alone) == (1, 1)
    assert admitted == 7 and all(n == (30 + 3) * 2 * SAMPLES_PER_FRAME - LEAD_ZEROS for n in sizes)
    # 1 + the burst in a few batches (each prefill is followed by 3x its time of other work), not 1 + 6
    assert prefills <= 4, prefills


def test_speech_is_capped_to_the_room_left_in_the_cache(ckpt, ckpt_dir):
    """A long text in a short cache: the utterance ends where the cache does, complete and clean."""
    from engine.chatterbox.engine import ChatterboxEngine, ChatterboxOptions

    text = "Your appointment is on Tuesday at nine."
    p = T3Runner(ckpt.t3, "cpu", torch.float32, max_slots=1, max_len=512).voice_prefix(ckpt.conds.t3).length
    room = 20
    max_len = p + text_ids(ckpt, text).shape[1] + 2 + room

    async def main():
        engine = ChatterboxEngine(ChatterboxOptions(str(ckpt_dir), device="cpu", dtype="float32", max_streams=2,
                                                    max_len=max_len, max_tokens=40, **FAST))
        await engine.start()
        try:
            return [c async for c in engine.stream(text, VoiceSpec())]
        finally:
            await engine.close()

    audio = np.concatenate(asyncio.run(main()))
    assert len(audio) == (room + 3) * 2 * SAMPLES_PER_FRAME - LEAD_ZEROS  # capped at the room, then the 3 silence tokens


def test_voice_from_wav_is_cached_and_short_wavs_refused(ckpt, tmp_path):
    import wave

    from engine.chatterbox.voices import conditionals_from_wav

    def write(path, seconds):
        t = np.arange(int(16000 * seconds)) / 16000
        x = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
            w.writeframes((x * 16000).astype(np.int16).tobytes())

    write(tmp_path / "short.wav", 3)
    with pytest.raises(EngineError, match="at least 5 s"):
        conditionals_from_wav(ckpt, tmp_path / "short.wav", tmp_path / "cache", "cpu")
    write(tmp_path / "ref.wav", 6)
    conds = conditionals_from_wav(ckpt, tmp_path / "ref.wav", tmp_path / "cache", "cpu")
    assert conds.t3.cond_prompt_speech_tokens.shape[-1] <= 375
    assert conds.gen["prompt_feat"].shape[-1] == 80
    cached = list((tmp_path / "cache").glob("voice-*.pt"))
    assert len(cached) == 1
    again = conditionals_from_wav(ckpt, tmp_path / "ref.wav", tmp_path / "cache", "cpu")
    assert torch.equal(again.t3.speaker_emb, conds.t3.speaker_emb)


class _Completion:
    """Stands in for a CUDA event on a CPU: the batch counts as running until polled ``polls`` times."""

    def __init__(self, polls: int) -> None:
        self.left = polls

    def query(self) -> bool:
        self.left -= 1
        return self.left < 0

    def synchronize(self) -> None:
        self.left = -1


def test_scheduler_overlap_path_steps_t3_while_a_batch_is_in_flight(ckpt):
    """The GPU's overlap bookkeeping on a CPU: a launched batch completes only after a few of T3's
    steps (as a batch on its own CUDA stream would); every utterance still comes out whole, with
    the audio the alternating loop gives, and a caller hanging up mid-batch is counted once."""
    import time

    from engine.chatterbox.s3gen_streamer import PendingAudio
    from engine.chatterbox.scheduler import Scheduler, Voice

    from .chatterbox_harness import count_steps_in_flight, submit_utterances
    from engine.chatterbox.t3_runner import T3Runner

    class Deferred(S3GenStreamer):
        in_flight_steps = 0

        @property
        def overlaps(self) -> bool:
            return True

        def launch(self, jobs):
            pending = super().launch(jobs)
            return PendingAudio(pending.parts, pending.size, _Completion(3), None)

    def run(streamer_cls, cancel_one: bool):
        runner = T3Runner(ckpt.t3, "cpu", torch.float32, max_slots=4, max_len=512, sampling=GREEDY)
        streamer = streamer_cls(ckpt.s3gen, "cpu")
        sched = Scheduler(runner, streamer, windows=(10, 15, 25))
        voice = Voice("v", runner.voice_prefix(ckpt.conds.t3), streamer.prepare_voice(ckpt.conds.gen))
        steps_in_flight = count_steps_in_flight(sched)
        outs, dones, reqs = submit_utterances(sched, [voice], 3)
        cancelled = reqs[2]
        sched.start()
        if cancel_one:
            while not outs[2]:
                time.sleep(0.01)
            cancelled.cancel()
        for d in dones[:2]:
            assert d.wait(120)
        time.sleep(0.2)
        sched.stop()
        return [np.concatenate(c) if c else np.zeros(0) for c in outs], steps_in_flight(), sched.stats

    ours, in_flight, stats = run(Deferred, cancel_one=True)
    ref, none_in_flight, _ = run(S3GenStreamer, cancel_one=False)
    assert in_flight > 0 and none_in_flight == 0  # T3 stepped while batches were in flight
    for i in range(2):
        assert ours[i].size == (40 + 10 * i + 3) * 2 * SAMPLES_PER_FRAME
        assert ours[i].size == ref[i].size  # the same utterance, whatever the windows' timing
        assert np.isfinite(ours[i]).all()
        # the same audio: windows batched differently (other utterances, a cancelled one) differ
        # only by float rounding (1e-7 here, peak 0.1), held to the bound of
        # test_windows_of_different_utterances_batch_like_alone
        assert np.abs(ours[i] - ref[i]).max() < 1e-4, np.abs(ours[i] - ref[i]).max()
    assert stats.cancelled == 1 and stats.finished == 2
