"""Each fast path of the engine against its exact counterpart, on this machine's checkpoint.

The engine's speed comes from paths that change the arithmetic: T3 and the flow
in bfloat16, HiFT in float16, the block-causal reference (the voice's reference
attends only to itself, so its share is computed once), CUDA graphs, and
streaming in windows joined by cross-fades. The equivalence tests run on random
weights; whether a real checkpoint's activations suit these paths can only be
measured where the weights are. Everything here is teacher-forced: both sides
of a comparison get the same text and speech tokens (and the same noise), so
sampling is never the difference.

``run_checks`` (``sip-tts verify-engine``) compares, per sentence of a fixed set:

* ``t3.exact`` / ``flow.exact``: our float32 path against the stock chatterbox-tts
  code (HF GPT-2 forward, ``flow.inference``): that the exact path is exact here;
* ``t3.dtype``: logits of T3 in ``dtype`` against float32 (relative RMS error,
  greedy-token agreement, KL of the sampling distributions);
* ``flow.dtype``: mel SNR of the flow in ``dtype`` against float32;
* ``flow.reference_attention``: block-causal reference against full attention (stock);
* ``flow.graphs``: CUDA graphs against eager (GPU only);
* ``t3.graphs``: T3 as the engine runs it (CUDA graphs, 32 rows: the decode kernel), greedy
  tokens against eager argmax (GPU only);
* ``vocoder.dtype``: audio SNR of HiFT in float16 against float32;
* ``stream.*``: streamed windows with their joins against the whole utterance
  through the same path (audio SNR, log-spectral distance, and the largest step
  at a join relative to the signal's own 99.9th-percentile sample-to-sample step).

``startup_checks`` is the short subset the engine runs when it loads (on the
configured voice, its own reference tokens teacher-forced): one figure per
switchable path, so a path below its threshold is replaced by the exact one.
Thresholds are stated here and in the README.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .checkpoint import Checkpoint
from .s3gen_streamer import LOOKAHEAD_TOKENS, SILENCE_TOKEN, TOKEN_MEL_RATIO, FlowJob, S3GenStreamer
from .t3_runner import SamplingParams, T3Runner

SENTENCES: tuple[tuple[str, str], ...] = (
    ("short", "Hello, how can I help you?"),
    ("long", "Thank you for calling the clinic. Your appointment with doctor Patel is confirmed for Tuesday "
             "morning, and if you need to change it, please call us at least one day before."),
    ("numbers", "Your balance is $1,234.56, due on March 15th; call 555-0123 or press 2."),
    ("punctuation", "Wait... really?! Yes -- (I think so); let's see: one, two, three."),
    ("tags", "That is hilarious [laugh] okay, [sigh] let me check that for you."),
)

# (threshold, True: the figure must be >= it, False: <= it). Set from random-weight runs (CPU
# test checkpoint and the full-size random checkpoint on an H100); the real checkpoint's figures
# are what ``verify-engine`` is for.
THRESHOLDS: dict[str, tuple[float, bool]] = {
    "t3.exact.logits_rel_error": (1e-3, False),
    "t3.dtype.logits_rel_error": (0.05, False),
    "t3.dtype.greedy_agreement": (0.8, True),
    "t3.dtype.kl_nats": (0.05, False),
    "t3.graphs.greedy_agreement": (0.9, True),
    "flow.exact.mel_snr_db": (60.0, True),
    "flow.dtype.mel_snr_db": (25.0, True),
    "flow.reference_attention.mel_snr_db": (12.0, True),
    "flow.graphs.mel_snr_db": (40.0, True),
    "vocoder.dtype.audio_snr_db": (40.0, True),
    "stream.audio_snr_db": (20.0, True),
    "stream.lsd_db": (2.0, False),
    "stream.join_step_ratio": (1.0, False),
}
# the setting that turns each path off (the exact counterpart), for messages and fall-backs
PATHS = {"t3.exact": "none (the exact path itself)", "flow.exact": "none (the exact path itself)",
         "t3.dtype": "dtype", "flow.dtype": "dtype", "flow.reference_attention": "reference_attention",
         "flow.graphs": "cuda_graphs", "t3.graphs": "cuda_graphs", "vocoder.dtype": "vocoder_dtype",
         "stream": "none (streaming)"}
WINDOWS = (10, 15, 25, 50, 75)  # the scheduler's window sizes (new tokens per window)


@dataclass
class Check:
    name: str  # e.g. "flow.dtype.mel_snr_db"
    figure: float  # the worst over the sentences
    threshold: float
    higher_is_better: bool
    detail: str = ""  # which sentence gave the worst figure, what was compared
    skipped: str = ""  # why it did not run (e.g. "no GPU"); a skipped check passes

    @property
    def path(self) -> str:
        return ".".join(self.name.split(".")[:2]) if not self.name.startswith("stream") else "stream"

    @property
    def setting(self) -> str:
        return PATHS.get(self.path, self.path)

    @property
    def passed(self) -> bool:
        if self.skipped:
            return True
        if math.isnan(self.figure):
            return False
        return self.figure >= self.threshold if self.higher_is_better else self.figure <= self.threshold

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(path=self.path, setting=self.setting, passed=self.passed,
                 figure=None if math.isnan(self.figure) else self.figure)
        if math.isinf(self.figure):
            d["figure"] = "inf" if self.figure > 0 else "-inf"
        return d


def make_check(name: str, values: list[tuple[float, str]], skipped: str = "") -> Check:
    """The worst of ``values`` ((figure, sentence) pairs) against the name's threshold."""
    threshold, higher = THRESHOLDS[name]
    if skipped or not values:
        return Check(name, float("nan"), threshold, higher, skipped=skipped or "nothing to compare")

    def badness(v: tuple[float, str]) -> float:
        x = v[0]
        if math.isnan(x):
            return math.inf
        return -x if higher else x

    worst = max(values, key=badness)
    return Check(name, worst[0], threshold, higher, detail=worst[1])


# -- figures ---------------------------------------------------------------------------
def snr_db(ref: np.ndarray | torch.Tensor, x: np.ndarray | torch.Tensor) -> float:
    ref = np.asarray(torch.as_tensor(ref).detach().double().cpu())
    x = np.asarray(torch.as_tensor(x).detach().double().cpu())
    err = float(((ref - x) ** 2).sum())
    if not math.isfinite(err):
        return float("-inf")
    return float("inf") if err == 0 else 10 * math.log10(float((ref ** 2).sum()) / err)


def log_spectral_distance_db(ref: np.ndarray, x: np.ndarray, n_fft: int = 512, hop: int = 128) -> float:
    """Mean over frames of the RMS difference of the power spectra in dB (bins 60 dB below the
    loudest are floored there, so near-silence does not dominate)."""
    def power(a: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(a, dtype=np.float32))
        s = torch.stft(t, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True)
        return s.abs().double() ** 2

    p, q = power(ref), power(x)
    floor = max(float(p.max()), 1e-20) * 1e-6
    d = 10 * torch.log10(p.clamp(min=floor)) - 10 * torch.log10(q.clamp(min=floor))
    return float(d.pow(2).mean(dim=0).sqrt().mean())


def join_step_ratio(audio: np.ndarray, chunk_sizes: list[int]) -> float:
    """The largest sample-to-sample step across a join, relative to the signal's own 99.9th
    percentile step (1.0: no join is a bigger jump than the speech itself makes)."""
    steps = np.abs(np.diff(np.asarray(audio, dtype=np.float64)))
    joins = np.cumsum(chunk_sizes)[:-1]
    joins = joins[(joins > 0) & (joins < len(audio))]
    if not len(joins):
        return 0.0
    typical = float(np.percentile(steps, 99.9))
    worst = float(max(steps[j - 1] for j in joins))
    return worst / typical if typical > 0 else (0.0 if worst == 0 else float("inf"))


# -- T3, teacher-forced ---------------------------------------------------------------
GREEDY = SamplingParams(temperature=1.0, top_k=1, top_p=1.0, repetition_penalty=1.0)


def forced_logits(runner: T3Runner, prefix: object, text_ids: torch.Tensor, forced: list[int]) -> torch.Tensor:
    """Logits [len(forced), V] (float32) of our runner fed ``forced`` as its speech tokens;
    row i predicts forced[i]. Eager (the graphs keep no logits)."""
    _, first = runner.admit(0, prefix, text_ids)  # type: ignore[arg-type]
    rows = [first.float()]
    for tok in forced[:-1]:
        runner.tokens[0] = tok
        runner.step(1)
        rows.append(runner.last_logits[0].float())  # type: ignore[index]
    return torch.stack(rows)


@torch.inference_mode()
def stock_logits(t3: torch.nn.Module, cond: object, text_ids: torch.Tensor, forced: list[int]) -> torch.Tensor:
    """The stock HF GPT-2 forward over conditioning + text + start token + ``forced``."""
    from .checkpoint import START_SPEECH

    device = next(t3.parameters()).device
    speech = torch.tensor([[START_SPEECH] + forced[:-1]], device=device)
    emb, _ = t3.prepare_input_embeds(t3_cond=cond, text_tokens=text_ids.view(1, -1).to(device), speech_tokens=speech)
    hidden = t3.tfmr(inputs_embeds=emb)[0]
    return t3.speech_head(hidden[0, -len(forced):]).float()


def t3_runner(ckpt: Checkpoint, device: str, dtype: torch.dtype, positions: int) -> T3Runner:
    return T3Runner(ckpt.t3, device, dtype, max_slots=1, max_len=positions, sampling=GREEDY, cuda_graphs=False)


def logit_figures(ref: torch.Tensor, got: torch.Tensor, temperature: float = 0.8) -> tuple[float, float, float]:
    """(max relative RMS error per position, greedy agreement, mean KL(ref || got) at ``temperature``)."""
    ref, got = ref.double(), got.double()
    if not torch.isfinite(got).all():
        return float("inf"), 0.0, float("inf")
    rel = ((got - ref).norm(dim=-1) / ref.norm(dim=-1).clamp(min=1e-12)).max().item()
    agree = (got.argmax(-1) == ref.argmax(-1)).double().mean().item()
    lp, lq = (ref / temperature).log_softmax(-1), (got / temperature).log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    return rel, agree, max(kl, 0.0)


def forced_greedy(runner: T3Runner, prefix: object, text_ids: torch.Tensor, forced: list[int],
                  rows: int) -> list[int]:
    """Row 0's greedy tokens with ``rows`` copies decoded together (graphs, and from 32 rows the
    decode kernel, as the engine runs them), every row fed ``forced``."""
    slots = list(range(rows))
    runner.admit_many(slots, prefix, [text_ids] * rows, [GREEDY] * rows, [0] * rows)  # type: ignore[arg-type]
    out = [int(runner.tokens[0])]
    for tok in forced[:-1]:
        runner.tokens[:rows] = tok
        out.append(int(runner.step(rows)[0]))
    return out


# -- S3Gen, teacher-forced -------------------------------------------------------------
def window_ends(n: int, windows: tuple[int, ...] = WINDOWS) -> list[int]:
    """The token counts at which the scheduler cuts windows of an ``n``-token utterance (the
    last one final: its whole length, silence tokens included)."""
    ends, at, i = [], windows[0] + LOOKAHEAD_TOKENS, 0
    while at < n:
        ends.append(at)
        i += 1
        at += windows[min(i, len(windows) - 1)]
    return ends + [n]


@torch.inference_mode()
def render(streamer: S3GenStreamer, voice: object, tokens: torch.Tensor, seed: int,
           windows: bool, audio: bool = True) -> tuple[torch.Tensor, np.ndarray, list[int]]:
    """(mel [80, F] float32, audio, chunk sizes): the whole utterance at once, or in the scheduler's
    windows (``audio`` False: the flow only, no audio)."""
    n = tokens.numel()
    utt = streamer.new_utterance(voice, seed, n + 8)  # type: ignore[arg-type]
    ends = window_ends(n) if windows else [n]
    chunks = []
    for end in ends:
        final = end == n
        streamer.flow_batch([FlowJob(utt, tokens[:end], final)])
        if audio:
            chunks.append(streamer.vocode([utt], [final])[0])
    mel = torch.cat([m.float() for m in utt.mel], 1) if utt.mel else torch.zeros(80, 0)
    return mel, np.concatenate(chunks) if chunks else np.zeros(0, np.float32), [c.size for c in chunks]


@torch.inference_mode()
def voice_with_noise(streamer: S3GenStreamer, gen: dict, noise: torch.Tensor | None = None) -> object:
    """The voice, its reference's initial noise replaced by ``noise`` (the tapes re-recorded)."""
    from .flow_cache import record_voice

    voice = streamer.prepare_voice(gen)
    if noise is not None:
        voice.prompt_noise = noise.to(streamer.device, streamer.flow_dtype)
        if streamer.reference_cache:
            mu = streamer._encode([voice.prompt_token])[0]
            voice.tapes = record_voice(streamer.flow.decoder.estimator, voice.prompt_noise, mu, voice.spk,
                                       voice.prompt_feat.t())
    return voice


@torch.inference_mode()
def stock_flow_mel(s3gen: torch.nn.Module, gen: dict, tokens: torch.Tensor, gen_noise: torch.Tensor,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stock ``flow.inference`` (full attention, float32): (mel [80, F], the reference's noise it drew)."""
    device = next(s3gen.parameters()).device
    tp = int(torch.as_tensor(gen["prompt_token"]).numel())
    n = tokens.numel()
    torch.manual_seed(seed)  # stock draws z = randn_like(mu) [1, 80, 2 (tp + n)]; so do we, to know it
    z = torch.randn(1, 80, TOKEN_MEL_RATIO * (tp + n), device=device)
    torch.manual_seed(seed)
    mel, _ = s3gen.flow.inference(
        token=tokens[None].to(device), token_len=torch.tensor([n], device=device),
        prompt_token=torch.as_tensor(gen["prompt_token"]).to(device),
        prompt_token_len=torch.as_tensor(gen["prompt_token_len"]).to(device),
        prompt_feat=torch.as_tensor(gen["prompt_feat"]).to(device), prompt_feat_len=None,
        embedding=torch.as_tensor(gen["embedding"]).to(device), finalize=True, n_timesteps=2,
        noised_mels=gen_noise[:, :TOKEN_MEL_RATIO * n][None].to(device, torch.float32), meanflow=True)
    return mel[0].float(), z[0, :, :TOKEN_MEL_RATIO * tp]


# -- the full run --------------------------------------------------------------------
@dataclass
class Plan:
    """What to verify: the fast paths as configured (``auto`` vocoder: float16 is what is tried)."""

    device: str = "cpu"
    dtype: str = "bfloat16"
    vocoder_dtype: str = "float16"
    reference_attention: str = "block_causal"
    cuda_graphs: bool = True
    sentences: tuple[tuple[str, str], ...] = SENTENCES
    max_tokens: int = 200  # speech tokens per sentence (stock generation is capped here)
    seed: int = 7
    sampling: SamplingParams = field(default_factory=SamplingParams)
    only: tuple[str, ...] = ()  # check-name prefixes to run ("t3", "flow.dtype", ...); empty: all

    def wants(self, *names: str) -> bool:
        return not self.only or any(n.startswith(o) or o.startswith(n) for n in names for o in self.only)


def _generate(ckpt: Checkpoint, cond: object, text_ids: torch.Tensor, plan: Plan) -> list[int]:
    """Speech tokens by the stock T3 (its own sampling, seeded), stop token and specials removed."""
    s = plan.sampling
    torch.manual_seed(plan.seed)
    with torch.inference_mode():
        out = ckpt.t3.inference_turbo(cond, text_ids.view(1, -1).to(plan.device), temperature=s.temperature,
                                      top_k=s.top_k, top_p=s.top_p, repetition_penalty=s.repetition_penalty,
                                      max_gen_len=plan.max_tokens - 1)
    toks = [int(t) for t in torch.as_tensor(out).view(-1).tolist()]
    cut = next((i for i, t in enumerate(toks) if t >= 6561), len(toks))
    return toks[:cut][:plan.max_tokens] or [SILENCE_TOKEN]


def run_checks(ckpt: Checkpoint, conds: object, tokenize: Callable[[str], torch.Tensor], plan: Plan,
               log: Callable[[str], None] = lambda s: None) -> list[Check]:
    """Every comparison over ``plan.sentences``; one ``Check`` per figure (the worst sentence)."""
    dev = plan.device
    dtype = getattr(torch, plan.dtype)
    fast_dtype = plan.dtype != "float32"
    voc_dtype = getattr(torch, "float16" if plan.vocoder_dtype == "auto" else plan.vocoder_dtype)
    block_causal = plan.reference_attention == "block_causal"
    graphs = plan.cuda_graphs and torch.device(dev).type == "cuda"
    gen = conds.gen  # type: ignore[attr-defined]
    cond = conds.t3  # type: ignore[attr-defined]
    figures: dict[str, list[tuple[float, str]]] = {name: [] for name in THRESHOLDS}

    with torch.inference_mode():
        prefix_len = int(ckpt.t3.prepare_conditioning(cond)[0].shape[0])
    s3 = plan.wants("flow", "vocoder", "stream")
    exact_s = cached32 = configured = eager_cfg = fast_flow = None  # type: ignore[assignment]
    v_exact = v_cached = v_cfg = v_eager = v_fast = None
    if s3:
        # Our paths, each with its voice prepared once (the same reference noise: prepare_voice's seed).
        exact_s = S3GenStreamer(ckpt.s3gen, dev, reference_cache=False, cuda_graphs=False)
        v_exact = exact_s.prepare_voice(gen)
        cached32 = S3GenStreamer(ckpt.s3gen, dev, reference_cache=True, cuda_graphs=False) if block_causal else None
        v_cached = cached32.prepare_voice(gen) if cached32 is not None else None
        configured = S3GenStreamer(ckpt.s3gen, dev, flow_dtype=dtype, hift_dtype=voc_dtype,
                                   reference_cache=block_causal, cuda_graphs=graphs)
        v_cfg = configured.prepare_voice(gen)
        eager_cfg = S3GenStreamer(ckpt.s3gen, dev, flow_dtype=dtype, hift_dtype=voc_dtype,
                                  reference_cache=block_causal, cuda_graphs=False) if graphs else None
        v_eager = eager_cfg.prepare_voice(gen) if eager_cfg is not None else None
        # the flow in dtype, eager (the graphs are checked on their own)
        fast_flow, v_fast = (eager_cfg, v_eager) if eager_cfg is not None else (configured, v_cfg)
        if graphs:
            configured.capture_graphs(v_cfg, WINDOWS[-1])
    for label, text in plan.sentences:
        t0 = time.perf_counter()
        ids = tokenize(text).view(-1)
        forced = _generate(ckpt, cond, ids, plan)
        positions = prefix_len + ids.numel() + len(forced) + 8
        if plan.wants("t3"):
            # T3: stock float32 / ours float32 / ours in dtype, all fed the same tokens
            ref = stock_logits(ckpt.t3, cond, ids, forced)
            r32 = t3_runner(ckpt, dev, torch.float32, positions)
            ours32 = forced_logits(r32, r32.voice_prefix(cond), ids, forced)
            figures["t3.exact.logits_rel_error"].append((logit_figures(ref, ours32)[0], label))
            del r32
            if fast_dtype:
                rlo = t3_runner(ckpt, dev, dtype, positions)
                rel, agree, kl = logit_figures(ref, forced_logits(rlo, rlo.voice_prefix(cond), ids, forced))
                figures["t3.dtype.logits_rel_error"].append((rel, label))
                figures["t3.dtype.greedy_agreement"].append((agree, label))
                figures["t3.dtype.kl_nats"].append((kl, label))
                del rlo
            if graphs:  # the engine's T3: graphs, 32 rows (the decode kernel), against eager argmax
                r_e = t3_runner(ckpt, dev, dtype, positions)
                want = forced_logits(r_e, r_e.voice_prefix(cond), ids, forced).argmax(-1).tolist()
                del r_e
                r_g = T3Runner(ckpt.t3, dev, dtype, max_slots=32, max_len=positions, sampling=GREEDY, cuda_graphs=True)
                got = forced_greedy(r_g, r_g.voice_prefix(cond), ids, forced, 32)
                del r_g
                figures["t3.graphs.greedy_agreement"].append((float(np.mean([a == b for a, b in zip(got, want)])),
                                                              label))
        if not s3:
            log(f"{label}: {len(forced)} speech tokens, {time.perf_counter() - t0:.1f} s")
            continue
        # S3Gen: the utterance as the scheduler hands it over (3 silence tokens at the end)
        tokens = torch.tensor(forced + [SILENCE_TOKEN] * 3, device=dev)
        # stock flow.inference against our exact path given the noise stock draws
        probe = exact_s.new_utterance(v_exact, plan.seed, tokens.numel() + 8)
        stock_mel, ref_noise = stock_flow_mel(ckpt.s3gen, gen, tokens, probe.noise, plan.seed)
        mel_stock_noise, _, _ = render(exact_s, voice_with_noise(exact_s, gen, ref_noise), tokens, plan.seed,
                                       windows=False, audio=False)
        figures["flow.exact.mel_snr_db"].append((snr_db(stock_mel, mel_stock_noise), label))
        mel_full, _, _ = render(exact_s, v_exact, tokens, plan.seed, windows=False, audio=False)
        mel_bc = mel_full
        if cached32 is not None:
            mel_bc, _, _ = render(cached32, v_cached, tokens, plan.seed, windows=False, audio=False)
            figures["flow.reference_attention.mel_snr_db"].append((snr_db(mel_full, mel_bc), label))
        if fast_dtype:
            mel_lo, _, _ = render(fast_flow, v_fast, tokens, plan.seed, windows=False, audio=False)
            figures["flow.dtype.mel_snr_db"].append((snr_db(mel_bc, mel_lo), label))
        if voc_dtype != torch.float32:
            figures["vocoder.dtype.audio_snr_db"].append((configured.vocoder_snr_db(mel_full.t()), label))
        # the configured path: streamed windows with joins against the same path whole
        mel_s, audio_s, sizes = render(configured, v_cfg, tokens, plan.seed, windows=True)
        # (whole: eager; the graphs are captured for windows' sizes, and checked on their own)
        _, audio_w, _ = render(fast_flow, v_fast, tokens, plan.seed, windows=False)
        figures["stream.audio_snr_db"].append((snr_db(audio_w, audio_s), label))
        figures["stream.lsd_db"].append((log_spectral_distance_db(audio_w, audio_s), label))
        figures["stream.join_step_ratio"].append((join_step_ratio(audio_s, sizes), label))
        if eager_cfg is not None:
            mel_e, _, _ = render(eager_cfg, v_eager, tokens, plan.seed, windows=True, audio=False)
            figures["flow.graphs.mel_snr_db"].append((snr_db(mel_e, mel_s), label))
        log(f"{label}: {len(forced)} speech tokens, {time.perf_counter() - t0:.1f} s")

    skipped = {
        "t3.dtype": "" if fast_dtype else "dtype is float32",
        "flow.dtype": "" if fast_dtype else "dtype is float32",
        "flow.reference_attention": "" if block_causal else "reference_attention is full",
        "vocoder.dtype": "" if voc_dtype != torch.float32 else "vocoder_dtype is float32",
        "flow.graphs": "" if graphs else ("cuda_graphs is off" if not plan.cuda_graphs else "no GPU"),
        "t3.graphs": "" if graphs else ("cuda_graphs is off" if not plan.cuda_graphs else "no GPU"),
    }
    return [make_check(name, figures[name], skipped.get(".".join(name.split(".")[:2]), "")
                       or ("" if plan.wants(name) else "not asked for (--only)")) for name in THRESHOLDS]


# -- the start-up subset -------------------------------------------------------------
STARTUP_TEXT = "Hello, thank you for calling. How can I help you today?"
STARTUP_TOKENS = 60  # the voice's own reference tokens, teacher-forced


@dataclass
class StartupResult:
    """Per switchable path: the measured figure and whether the fast path is kept."""

    checks: list[Check]
    seconds: float

    def failed(self, path: str) -> Check | None:
        return next((c for c in self.checks if c.path == path and not c.passed), None)


@torch.inference_mode()
def startup_checks(ckpt: Checkpoint, conds: object, tokenize: Callable[[str], torch.Tensor], device: str,
                   dtype: str, vocoder_dtype: str, block_causal: bool) -> StartupResult:
    """The short subset on the configured voice: T3 logits in ``dtype``, the flow's mel in ``dtype``
    and with the block-causal reference, HiFT in ``vocoder_dtype``, each against its exact path.
    (Graphs are checked by the engine on its own streamer, after capture: ``graphs_check``.)"""
    t0 = time.perf_counter()
    gen, cond = conds.gen, conds.t3  # type: ignore[attr-defined]
    checks: list[Check] = []
    lo = getattr(torch, dtype)
    prompt = torch.as_tensor(gen["prompt_token"]).view(-1)
    forced = [int(t) for t in prompt[:STARTUP_TOKENS].tolist()]
    if lo != torch.float32:
        ids = tokenize(STARTUP_TEXT).view(-1)
        positions = int(ckpt.t3.prepare_conditioning(cond)[0].shape[0]) + ids.numel() + len(forced) + 8
        r32 = t3_runner(ckpt, device, torch.float32, positions)
        ref = forced_logits(r32, r32.voice_prefix(cond), ids, forced)
        del r32
        rlo = t3_runner(ckpt, device, lo, positions)
        rel, agree, kl = logit_figures(ref, forced_logits(rlo, rlo.voice_prefix(cond), ids, forced))
        del rlo
        checks += [make_check("t3.dtype.logits_rel_error", [(rel, "start-up")]),
                   make_check("t3.dtype.greedy_agreement", [(agree, "start-up")])]
    tokens = torch.tensor(forced + [SILENCE_TOKEN] * 3, device=device)
    exact_mel = None
    if block_causal or lo != torch.float32:
        full = S3GenStreamer(ckpt.s3gen, device, reference_cache=False, cuda_graphs=False)
        exact_mel, _, _ = render(full, full.prepare_voice(gen), tokens, 1, windows=False, audio=False)
        del full
    base = exact_mel
    if block_causal:
        bc = S3GenStreamer(ckpt.s3gen, device, reference_cache=True, cuda_graphs=False)
        base, _, _ = render(bc, bc.prepare_voice(gen), tokens, 1, windows=False, audio=False)
        checks.append(make_check("flow.reference_attention.mel_snr_db", [(snr_db(exact_mel, base), "start-up")]))
        del bc
    if lo != torch.float32:
        s = S3GenStreamer(ckpt.s3gen, device, flow_dtype=lo, reference_cache=block_causal, cuda_graphs=False)
        mel, _, _ = render(s, s.prepare_voice(gen), tokens, 1, windows=False, audio=False)
        checks.append(make_check("flow.dtype.mel_snr_db", [(snr_db(base, mel), "start-up")]))
        del s
    if vocoder_dtype != "float32":
        s = S3GenStreamer(ckpt.s3gen, device, hift_dtype=getattr(torch, vocoder_dtype), reference_cache=False,
                          cuda_graphs=False)
        snr = s.vocoder_snr_db(torch.as_tensor(gen["prompt_feat"]))
        checks.append(make_check("vocoder.dtype.audio_snr_db", [(snr, "start-up: the voice's reference mel")]))
        del s
    return StartupResult(checks, time.perf_counter() - t0)


@torch.inference_mode()
def graphs_check(streamer: S3GenStreamer, voice: object, gen: dict) -> Check:
    """The engine's own streamer (graphs captured) against the same windows run eagerly."""
    tokens = torch.as_tensor(gen["prompt_token"]).view(-1)[:STARTUP_TOKENS].to(streamer.device)
    tokens = torch.cat([tokens, torch.full((3,), SILENCE_TOKEN, device=streamer.device)])
    with_graphs, _, _ = render(streamer, voice, tokens, 1, windows=True, audio=False)
    saved = streamer.graphs, streamer.encoder_graphs, streamer.vocoder_graphs
    streamer.graphs = streamer.encoder_graphs = streamer.vocoder_graphs = None
    try:
        eager, _, _ = render(streamer, voice, tokens, 1, windows=True, audio=False)
    finally:
        streamer.graphs, streamer.encoder_graphs, streamer.vocoder_graphs = saved
    return make_check("flow.graphs.mel_snr_db", [(snr_db(eager, with_graphs), "start-up")])


# -- report --------------------------------------------------------------------------
def table(checks: list[Check]) -> str:
    """A markdown table: check, figure, threshold, passed."""
    def fmt(x: float) -> str:
        if math.isnan(x):
            return "-"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{x:.4g}"

    rows = ["| check | figure | threshold | passed | setting | worst on |", "|---|---|---|---|---|---|"]
    for c in checks:
        passed = f"skipped ({c.skipped})" if c.skipped else ("yes" if c.passed else "**NO**")
        rows.append(f"| {c.name} | {fmt(c.figure)} | {'>=' if c.higher_is_better else '<='} {fmt(c.threshold)} "
                    f"| {passed} | {c.setting} | {c.detail} |")
    return "\n".join(rows)
