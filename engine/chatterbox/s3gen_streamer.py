"""S3Gen + HiFT on token windows, as tokens arrive, batched across utterances.

Flow (tokens → mel). The stock model attends over the whole sequence (the
10 s reference's 250 tokens / 500 mel frames included), so a window's mel is
computed from the reference plus every token so far, and only the frames not
emitted yet are kept. The last 3 tokens are lookahead: their frames are
produced by the next window (or by the final one). Windows of different
utterances run as one right-padded batch (padding is masked exactly: causal
convolutions, per-frame LayerNorm and key masks in attention). What depends
only on the voice — the reference's token ids, its mel (the decoder's
condition), the speaker projection and the reference's share of the initial
noise — is prepared once per voice (``VoiceGen``).

Vocoder (mel → 24 kHz). HiFT's convolutions look both ways, so each window is
vocoded with ``LEFT`` frames of already-emitted mel as left context, and its
last ``HOLD`` frames are held back until the next window supplies their right
context; the overlap is cross-faded over ``XFADE`` samples. The neural source
is made continuous across windows: the harmonic phase is carried from one
window to the next and the source noise is indexed by absolute sample
position (a fixed noise table), so it does not depend on where windows fall.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .flow_cache import Tape, check_supported, record_voice, solve_meanflow_cached

SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = 480  # HiFT: 8 * 5 * 3 upsampling * 4 iSTFT hop
LOOKAHEAD_TOKENS = 3
TOKEN_MEL_RATIO = 2
LEFT = 16  # mel frames of left context for the vocoder
HOLD = 6  # mel frames held back until their right context exists
XFADE = 240  # samples cross-faded at each join (10 ms)
NOISE_FRAMES = 512  # the source-noise table: about 10 s, indexed by absolute frame
SILENCE_TOKEN = 4299  # S3GEN_SIL: appended (x3) at the end, as the stock pipeline does
CONTEXT_TOKENS = 25  # already emitted tokens (1 s) re-run before each window's new ones


def _on(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    param = next(module.parameters())
    if param.dtype == dtype and param.device == device:
        return module
    return copy.deepcopy(module).to(device, dtype)


def estimator_forward(est: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                      spks: torch.Tensor, cond: torch.Tensor, r: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The stock ConditionalDecoder.forward, minus its per-block host syncs.

    Stock rebuilds the attention mask in every block through
    ``add_optional_chunk_mask``, which calls ``.item()`` (a device sync) each time
    and so cannot be captured in a CUDA graph. With ``static_chunk_size == 0`` and
    one resolution level, every block uses the same key mask: ``bias`` is computed
    once by the caller. Everything else is the stock modules, called in the stock order.
    """
    temb = est.time_mlp(est.time_embeddings(t).to(t.dtype))
    if est.meanflow:
        remb = est.time_mlp(est.time_embeddings(r).to(t.dtype))
        temb = est.time_embed_mixer(torch.cat([temb, remb], dim=1))
    h = torch.cat([x, mu, spks[:, :, None].expand(-1, -1, x.shape[-1]), cond], dim=1)
    hiddens = []
    for resnet, blocks, downsample in est.down_blocks:
        h = resnet(h, mask, temb)
        h = h.transpose(1, 2).contiguous()
        for block in blocks:
            h = block(hidden_states=h, attention_mask=bias, timestep=temb)
        h = h.transpose(1, 2).contiguous()
        hiddens.append(h)
        h = downsample(h * mask)
    for resnet, blocks in est.mid_blocks:
        h = resnet(h, mask, temb)
        h = h.transpose(1, 2).contiguous()
        for block in blocks:
            h = block(hidden_states=h, attention_mask=bias, timestep=temb)
        h = h.transpose(1, 2).contiguous()
    for resnet, blocks, upsample in est.up_blocks:
        skip = hiddens.pop()
        h = torch.cat([h[:, :, :skip.shape[-1]], skip], dim=1)
        h = resnet(h, mask, temb)
        h = h.transpose(1, 2).contiguous()
        for block in blocks:
            h = block(hidden_states=h, attention_mask=bias, timestep=temb)
        h = h.transpose(1, 2).contiguous()
        h = upsample(h * mask)
    h = est.final_block(h, mask)
    return est.final_proj(h * mask) * mask


def solve_meanflow(est: torch.nn.Module, z: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor,
                   cond: torch.Tensor, n_steps: int = 2) -> torch.Tensor:
    """Meanflow Euler steps from noise ``z`` (the stock ``basic_euler``, batched)."""
    b = z.shape[0]
    bias = (1.0 - mask.to(z.dtype)) * -1.0e10  # [B, 1, T]: the stock mask_to_bias
    x = z
    for i in range(n_steps):
        t = torch.full((b,), i / n_steps, device=z.device, dtype=z.dtype)
        r = torch.full((b,), (i + 1) / n_steps, device=z.device, dtype=z.dtype)
        x = x + (1.0 / n_steps) * estimator_forward(est, x, mask, mu, t, spks, cond, r, bias)
    return x


class FlowGraphs:
    """CUDA graphs of the whole meanflow solve over generated frames, per (batch, frames) bucket.

    The voice's reference states (``Tape``s) are graph inputs: static buffers,
    padded to ``ref_frames`` keys, refilled when a batch of another voice comes.
    Padding (batch rows, frames, reference keys) is masked exactly.
    """

    def __init__(self, est: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                 batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32), frame_step: int = 32,
                 ref_frames: int = 512) -> None:
        self.est = est
        self.device = device
        self.dtype = dtype
        self.batches = batches
        self.frame_step = frame_step
        self.ref_frames = ref_frames
        self.pool = torch.cuda.graph_pool_handle()
        self.warm = False
        self.tapes: list[Tape] | None = None  # static reference states read by every graph
        self.loaded: object = None  # the voice whose states are in ``tapes``
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]] = {}

    def bucket(self, b: int, t: int) -> tuple[int, int]:
        bb = next((x for x in self.batches if x >= b), None)
        if bb is None:
            raise ValueError(f"flow batch {b} exceeds {self.batches[-1]}")
        return bb, -(-t // self.frame_step) * self.frame_step

    def load_voice(self, voice: "VoiceGen") -> None:
        if self.loaded is voice:
            return
        padded = [tape.padded(self.ref_frames) for tape in voice.tapes]
        if self.tapes is None:
            self.tapes = padded
        else:
            for static, new in zip(self.tapes, padded):
                for a, b in zip(static.conv_tails + static.keys + static.values + [static.key_bias],
                                new.conv_tails + new.keys + new.values + [new.key_bias]):
                    a.copy_(b)
        self.loaded = voice

    @torch.inference_mode()  # no autograd records (they would keep every activation alive)
    def _capture(self, b: int, t: int) -> tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]:
        if self.tapes is None:
            raise RuntimeError("FlowGraphs: load a voice before capturing")
        d, dt = self.device, self.dtype
        ins = dict(z=torch.zeros(b, 80, t, device=d, dtype=dt), mask=torch.zeros(b, 1, t, device=d, dtype=dt),
                   mu=torch.zeros(b, 80, t, device=d, dtype=dt), spks=torch.zeros(b, 80, device=d, dtype=dt))
        ins["mask"][:, :, :1] = 1
        if not self.warm:
            # Lazy initialisation (cuBLAS/cuDNN handles, autotuning) once, outside any capture,
            # on the current stream: blocks cached on a side stream could not be reused later.
            solve_meanflow_cached(self.est, self.tapes, **ins)
            torch.cuda.synchronize(d)
            torch.cuda.empty_cache()  # the graphs' private pool cannot use blocks cached here
            self.warm = True
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = solve_meanflow_cached(self.est, self.tapes, **ins)
        self.graphs[(b, t)] = (graph, ins, out)
        return self.graphs[(b, t)]

    def capture_all(self, max_frames: int) -> None:
        # Largest first: the shared pool is sized by the first capture and reused by the rest.
        for b in reversed(self.batches):
            for t in range(-(-max_frames // self.frame_step) * self.frame_step, 0, -self.frame_step):
                if (b, t) not in self.graphs:
                    self._capture(b, t)

    def __call__(self, voice: "VoiceGen", z: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor,
                 spks: torch.Tensor) -> torch.Tensor:
        self.load_voice(voice)
        b, _, t = z.shape
        key = self.bucket(b, t)
        entry = self.graphs.get(key) or self._capture(*key)
        graph, ins, out = entry
        for name, value in (("z", z), ("mask", mask), ("mu", mu)):
            ins[name].zero_()
            ins[name][:b, :, :t] = value
        ins["spks"].zero_()
        ins["spks"][:b] = spks
        graph.replay()
        return out[:b, :, :t].clone()


@dataclass
class VoiceGen:
    """The per-voice part of S3Gen's input, prepared once."""

    prompt_token: torch.Tensor  # [Tp] long
    prompt_feat: torch.Tensor  # [2*Tp, 80]
    spk: torch.Tensor  # [80] speaker embedding after normalise + affine
    prompt_noise: torch.Tensor  # [80, 2*Tp] the reference's share of the initial noise
    tapes: list[Tape] | None = None  # the reference's estimator states per meanflow step (flow_cache)


@dataclass
class UtteranceAudio:
    """Streaming state of one utterance on the S3Gen side."""

    voice: VoiceGen
    seed: int
    noise: torch.Tensor  # [80, max_frames] initial noise of the generated mel frames
    phase0: torch.Tensor  # [harmonics] random initial phase (harmonic 0 is 0)
    noise_offset: int  # where this utterance starts in the source-noise table
    mel_done: int = 0  # generated mel frames produced by the flow so far
    mel: list[torch.Tensor] = field(default_factory=list)  # produced mel chunks [80, n] (kept for context)
    emitted_frames: int = 0  # mel frames whose audio has been emitted
    tail: torch.Tensor | None = None  # held-back audio of the last window, from frame emitted_frames
    phase_at: dict[int, torch.Tensor] = field(default_factory=dict)  # frame → cumulative harmonic phase (cycles)
    started: bool = False

    def mel_range(self, start: int, end: int) -> torch.Tensor:
        allm = torch.cat(self.mel, dim=1) if len(self.mel) > 1 else self.mel[0]
        self.mel = [allm]
        return allm[:, start:end]


@dataclass
class FlowJob:
    utt: UtteranceAudio
    tokens: torch.Tensor  # all generated speech tokens so far [N] (long, on device)
    final: bool


class S3GenStreamer:
    def __init__(self, s3gen: torch.nn.Module, device: str | torch.device = "cpu",
                 flow_dtype: torch.dtype = torch.float32, hift_dtype: torch.dtype = torch.float32,
                 cuda_graphs: bool = True, reference_cache: bool = True, context_tokens: int = CONTEXT_TOKENS) -> None:
        self.device = torch.device(device)
        self.profile = False  # True: sync at phase ends and add each phase's time to ``timings``
        self.timings: dict[str, float] = {}
        self._t = 0.0
        self.reference_cache = reference_cache
        self.context_tokens = context_tokens
        self.s3gen = s3gen
        # Our own copies when the precision differs, so the stock module stays usable as it was.
        self.flow = _on(s3gen.flow, self.device, flow_dtype)
        self.hift = _on(s3gen.mel2wav, self.device, hift_dtype)
        self.flow_dtype = flow_dtype
        self.hift_dtype = hift_dtype
        src = self.hift.m_source
        self.harmonics = src.l_sin_gen.harmonic_num + 1
        self.sine_amp = src.l_sin_gen.sine_amp
        self.noise_std = src.l_sin_gen.noise_std
        self.voiced_threshold = src.l_sin_gen.voiced_threshold
        g = torch.Generator(device="cpu").manual_seed(1234)
        self.noise_table = torch.randn(self.harmonics, NOISE_FRAMES * SAMPLES_PER_FRAME, generator=g).to(self.device)
        n_trim = SAMPLE_RATE // 50
        fade = torch.zeros(2 * n_trim)
        fade[n_trim:] = (torch.cos(torch.linspace(torch.pi, 0, n_trim)) + 1) / 2
        self.trim_fade = fade.to(self.device)
        self.xfade = torch.linspace(0.0, 1.0, XFADE, device=self.device)
        if reference_cache:
            check_supported(self.flow.decoder.estimator)
        self.graphs = FlowGraphs(self.flow.decoder.estimator, self.device, flow_dtype) \
            if cuda_graphs and reference_cache and self.device.type == "cuda" else None

    def _phase(self, name: str | None) -> None:
        """Profiling: time since the last mark goes to ``name`` (None: start)."""
        if not self.profile:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if name is not None:
            self.timings[name] = self.timings.get(name, 0.0) + now - self._t
        self._t = now

    # -- per voice / per utterance --------------------------------------------------
    @torch.inference_mode()
    def prepare_voice(self, gen: dict, seed: int = 0) -> VoiceGen:
        token = torch.as_tensor(gen["prompt_token"]).to(self.device).view(-1).long()
        feat = torch.as_tensor(gen["prompt_feat"]).to(self.device, self.flow_dtype).view(-1, 80)
        emb = torch.as_tensor(gen["embedding"]).to(self.device, self.flow_dtype).view(1, -1)
        spk = self.flow.spk_embed_affine_layer(F.normalize(emb, dim=1))[0]
        g = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(80, feat.size(0), generator=g).to(self.device, self.flow_dtype)
        voice = VoiceGen(token, feat, spk, noise)
        if self.reference_cache:
            # The reference alone through the encoder and every meanflow step: its share of
            # each window's work, done once (flow_cache explains why this is exact).
            mu = self._encode([token])[0][:, :feat.size(0)]
            voice.tapes = record_voice(self.flow.decoder.estimator, noise, mu, spk, feat.t())
        return voice

    def _encode(self, seqs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The flow encoder over token sequences (right-padded batch): [80, 2*len] each."""
        flow = self.flow
        lens = [q.numel() for q in seqs]
        lmax = max(lens)
        tokens = torch.zeros(len(seqs), lmax, dtype=torch.long, device=self.device)
        for i, q in enumerate(seqs):
            tokens[i, :lens[i]] = q
        token_len = torch.tensor(lens, device=self.device)
        key = torch.arange(lmax, device=self.device)
        tmask = (key[None, :] < token_len[:, None]).unsqueeze(-1).to(self.flow_dtype)
        h, _ = flow.encoder(flow.input_embedding(tokens) * tmask, token_len)
        h = flow.encoder_proj(h).transpose(1, 2)  # [B, 80, 2*lmax]
        return [h[i, :, :2 * n] for i, n in enumerate(lens)]

    def new_utterance(self, voice: VoiceGen, seed: int, max_tokens: int) -> UtteranceAudio:
        g = torch.Generator(device="cpu").manual_seed(seed)
        frames = TOKEN_MEL_RATIO * (max_tokens + 8)
        noise = torch.randn(80, frames, generator=g).to(self.device, self.flow_dtype)
        phase0 = (torch.rand(self.harmonics, generator=g) * 2 - 1) * np.pi
        phase0[0] = 0
        offset = int(torch.randint(0, NOISE_FRAMES, (1,), generator=g))
        return UtteranceAudio(voice, seed, noise, phase0.to(self.device), offset)

    # -- flow: tokens → mel -----------------------------------------------------------
    @torch.inference_mode()
    def flow_batch(self, jobs: list[FlowJob], n_steps: int = 2) -> list[torch.Tensor]:
        """New mel frames [80, n] for each job (possibly empty)."""
        items = []
        for job in jobs:
            n = job.tokens.numel()
            usable = n if job.final else max(0, n - LOOKAHEAD_TOKENS)
            items.append((job, n, TOKEN_MEL_RATIO * usable))
        live = [(j, n, frames) for j, n, frames in items if frames > j.utt.mel_done]
        out: dict[int, torch.Tensor] = {}
        if live:
            if self.reference_cache:
                mels = self._run_flow_cached(live, n_steps)
            else:
                mels = [(0, m) for m in self._run_flow(live, n_steps)]
            for (job, _, frames), (offset, mel) in zip(live, mels):
                new = mel[:, job.utt.mel_done - offset:frames - offset]
                job.utt.mel.append(new)
                job.utt.mel_done = frames
                out[id(job)] = new
        empty = torch.zeros(80, 0, device=self.device, dtype=self.flow_dtype)
        return [out.get(id(job), empty) for job in jobs]

    def _run_flow_cached(self, live: list[tuple[FlowJob, int, int]], n_steps: int) -> list[tuple[int, torch.Tensor]]:
        """Generated frames only: ``context_tokens`` already emitted tokens, then the new ones.

        The encoder still sees the reference's tokens (cheap; the generated tokens attend to
        them as in stock); the estimator gets the reference from the voice's tapes.
        Returns (first absolute frame, mel [80, n]) per job.
        """
        self._phase(None)
        starts = [max(0, j.utt.mel_done // TOKEN_MEL_RATIO - self.context_tokens) for j, _, _ in live]
        seqs = [torch.cat([j.utt.voice.prompt_token, j.tokens[s:n]]) for (j, n, _), s in zip(live, starts)]
        mus = self._encode(seqs)
        self._phase("encoder")
        results: list[tuple[int, torch.Tensor] | None] = [None] * len(live)
        by_voice: dict[int, list[int]] = {}
        for i, (job, _, _) in enumerate(live):
            by_voice.setdefault(id(job.utt.voice), []).append(i)
        for members in by_voice.values():
            voice = live[members[0]][0].utt.voice
            if n_steps != len(voice.tapes):
                raise ValueError(f"voice recorded for {len(voice.tapes)} meanflow steps, asked for {n_steps}")
            gen = [live[i][2] - TOKEN_MEL_RATIO * starts[i] for i in members]  # generated frames per item
            tmax = max(gen)
            b = len(members)
            z = torch.zeros(b, 80, tmax, device=self.device, dtype=self.flow_dtype)
            mu = torch.zeros_like(z)
            for row, (i, g) in enumerate(zip(members, gen)):
                first = TOKEN_MEL_RATIO * starts[i]
                p = voice.prompt_feat.size(0)
                z[row, :, :g] = live[i][0].utt.noise[:, first:first + g]
                mu[row, :, :g] = mus[i][:, p:p + g]
            lens = torch.tensor(gen, device=self.device)
            mask = (torch.arange(tmax, device=self.device)[None, :] < lens[:, None]).unsqueeze(1).to(z.dtype)
            spks = voice.spk[None].expand(b, -1).to(z.dtype)
            if self.graphs is not None:
                x = self.graphs(voice, z, mask, mu, spks)
            else:
                x = solve_meanflow_cached(self.flow.decoder.estimator, voice.tapes, z, mask, mu, spks)
            for row, (i, g) in enumerate(zip(members, gen)):
                results[i] = (TOKEN_MEL_RATIO * starts[i], x[row, :, :g].float())
        self._phase("estimator")
        return results  # type: ignore[return-value]

    def _run_flow(self, live: list[tuple[FlowJob, int, int]], n_steps: int) -> list[torch.Tensor]:
        flow = self.flow
        b = len(live)
        tp = [j.utt.voice.prompt_token.numel() for j, _, _ in live]
        lens = [t + n for t, (_, n, _) in zip(tp, live)]
        lmax = max(lens)
        tokens = torch.zeros(b, lmax, dtype=torch.long, device=self.device)
        for i, (job, n, _) in enumerate(live):
            tokens[i, :tp[i]] = job.utt.voice.prompt_token
            tokens[i, tp[i]:tp[i] + n] = job.tokens
        token_len = torch.tensor(lens, device=self.device)
        key = torch.arange(lmax, device=self.device)
        tmask = (key[None, :] < token_len[:, None]).unsqueeze(-1).to(self.flow_dtype)
        x = flow.input_embedding(tokens) * tmask
        h, _ = flow.encoder(x, token_len)  # [B, 2*lmax, 512]
        h = flow.encoder_proj(h)
        # decoder frames per item: reference frames + the usable generated frames
        dec_len = [2 * t + frames for t, (_, _, frames) in zip(tp, live)]
        tmax = max(dec_len)
        h = h[:, :tmax]
        fkey = torch.arange(tmax, device=self.device)
        mask = (fkey[None, :] < torch.tensor(dec_len, device=self.device)[:, None]).unsqueeze(1).to(h.dtype)
        conds = torch.zeros(b, 80, tmax, device=self.device, dtype=h.dtype)
        z = torch.zeros(b, 80, tmax, device=self.device, dtype=h.dtype)
        spks = torch.stack([j.utt.voice.spk for j, _, _ in live]).to(h.dtype)
        for i, (job, _, frames) in enumerate(live):
            p = 2 * tp[i]
            conds[i, :, :p] = job.utt.voice.prompt_feat.t()
            z[i, :, :p] = job.utt.voice.prompt_noise
            z[i, :, p:p + frames] = job.utt.noise[:, :frames]
        mu = h.transpose(1, 2).contiguous()
        if self.graphs is not None and n_steps == 2:
            x = self.graphs(z, mask, mu, spks, conds)
        else:
            x = solve_meanflow(flow.decoder.estimator, z, mask, mu, spks, conds, n_steps)
        return [x[i, :, 2 * tp[i]:dec_len[i]].float() for i in range(b)]

    # -- vocoder: mel → audio ------------------------------------------------------
    def _source(self, f0: torch.Tensor, utts: list[UtteranceAudio], start_frames: list[int],
                keep: list[int] | None = None) -> torch.Tensor:
        """The harmonic-plus-noise excitation [B, 1, samples], continuous across windows.

        ``keep``: per utterance, the frame where its next window will start; the phase
        there is remembered (None: remember every frame's).
        """
        b, frames = f0.shape
        n = frames * SAMPLES_PER_FRAME
        f0_up = f0.repeat_interleave(SAMPLES_PER_FRAME, dim=1)  # nearest upsampling
        mult = torch.arange(1, self.harmonics + 1, device=f0.device, dtype=torch.float64)
        cycles = f0_up.double()[:, None, :] * mult[None, :, None] / SAMPLE_RATE  # [B, H, n]
        start_phase = torch.stack([
            u.phase_at.get(s, torch.zeros(self.harmonics, device=f0.device, dtype=torch.float64))
            for u, s in zip(utts, start_frames)])
        cum = torch.cumsum(cycles, dim=-1) + start_phase[:, :, None]
        for i, (u, s) in enumerate(zip(utts, start_frames)):
            for old in [f for f in u.phase_at if f <= s]:
                del u.phase_at[old]
            if keep is None:
                ends = cum[i, :, SAMPLES_PER_FRAME - 1::SAMPLES_PER_FRAME] % 1.0  # phase at each frame end
                for k in range(frames):
                    u.phase_at[s + k + 1] = ends[:, k]
            elif s < keep[i] <= s + frames:
                u.phase_at[keep[i]] = cum[i, :, (keep[i] - s) * SAMPLES_PER_FRAME - 1] % 1.0
        theta = 2 * np.pi * (cum % 1.0)
        phase0 = torch.stack([u.phase0 for u in utts]).double()
        sine = self.sine_amp * torch.sin(theta + phase0[:, :, None])
        uv = (f0_up > self.voiced_threshold).to(sine.dtype)[:, None, :]
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        total = self.noise_table.size(1)
        idx = torch.stack([
            (torch.arange(n, device=f0.device) + (s + u.noise_offset) * SAMPLES_PER_FRAME) % total
            for u, s in zip(utts, start_frames)])
        noise = self.noise_table[:, idx].permute(1, 0, 2).double()  # [B, H, n]
        waves = (sine * uv + noise_amp * noise).to(self.hift_dtype).transpose(1, 2)  # [B, n, H]
        lin = self.hift.m_source.l_linear
        return torch.tanh(lin(waves)).transpose(1, 2)  # [B, 1, n]

    @torch.inference_mode()
    def vocode(self, utts: list[UtteranceAudio], final: list[bool]) -> list[np.ndarray]:
        """Audio (float32, 24 kHz) newly ready for each utterance, from the mel produced so far.

        Windows that are not an utterance's last run as one right-padded batch: what the
        padding changes lies within the ``HOLD`` frames, which are held back anyway. Last
        windows are grouped by exact length (their end is the end of the audio). The new
        audio of the whole batch comes to the host in one copy.
        """
        groups: dict[object, list[int]] = {}
        plans: list[tuple[int, int, int] | None] = []
        for i, (u, fin) in enumerate(zip(utts, final)):
            end = u.mel_done
            ready = end if fin else end - HOLD
            if ready <= u.emitted_frames:
                plans.append(None)
                continue
            start = max(0, u.emitted_frames - LEFT)
            plans.append((start, end, ready))
            groups.setdefault(end - start if fin else "padded", []).append(i)
        self._phase(None)
        pieces: dict[int, torch.Tensor] = {}
        for members in groups.values():
            mels = [utts[i].mel_range(plans[i][0], plans[i][1]) for i in members]
            longest = max(m.shape[1] for m in mels)
            mel = torch.stack([F.pad(m, (0, longest - m.shape[1])) for m in mels]).to(self.hift_dtype)
            f0 = self.hift.f0_predictor(mel)
            s = self._source(f0, [utts[i] for i in members], [plans[i][0] for i in members],
                             [max(0, plans[i][2] - LEFT) for i in members])
            audio = self.hift.decode(x=mel, s=s).float()  # [b, samples]
            for row, i in enumerate(members):
                pieces[i] = self._emit(utts[i], audio[row], *plans[i])
        out = [np.zeros(0, dtype=np.float32)] * len(utts)
        if pieces:
            order = sorted(pieces)
            host = torch.cat([pieces[i] for i in order]).cpu().numpy()
            at = 0
            for i in order:
                n = pieces[i].numel()
                out[i] = host[at:at + n]
                at += n
        self._phase("vocoder")
        return out

    def _emit(self, u: UtteranceAudio, audio: torch.Tensor, start: int, end: int, ready: int) -> torch.Tensor:
        off = (u.emitted_frames - start) * SAMPLES_PER_FRAME
        new = audio[off:(ready - start) * SAMPLES_PER_FRAME].clone()
        if u.tail is not None and new.numel():
            k = min(XFADE, new.numel(), u.tail.numel())
            new[:k] = u.tail[:k] * (1 - self.xfade[:k]) + new[:k] * self.xfade[:k]
        if not u.started and new.numel():
            k = min(self.trim_fade.numel(), new.numel())
            new[:k] *= self.trim_fade[:k]
            u.started = True
        u.tail = audio[(ready - start) * SAMPLES_PER_FRAME:(end - start) * SAMPLES_PER_FRAME].clone()
        u.emitted_frames = ready
        return new
