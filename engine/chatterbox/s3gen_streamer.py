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

On a GPU the encoder (``flow_encoder``), the meanflow solve (``FlowGraphs``)
and the vocoder (``vocoder``) each replay a CUDA graph per (batch, length)
bucket; on a CPU the same functions run eagerly (what the tests check).

Overlap. On a GPU a batch of windows runs on the streamer's own CUDA stream
(``launch``): the host enqueues it and returns, the audio comes to pinned host
memory behind an event, and ``collect`` does the host side (cross-fades) once
the event has completed. Meanwhile the caller's thread keeps stepping T3 on
another stream. Everything a window touches on the device is allocated on this
stream (utterance noise included, ``new_utterance``), so the caching allocator
never hands one of its blocks to the other stream while a kernel still reads it.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .bucket_graphs import BucketGraphs
from .flow_cache import Tape, check_supported, record_voice, solve_meanflow_cached
from .flow_encoder import (
    EncoderReference, WindowEncoderGraphs, check_encoder_supported, encode_reference, encode_tokens, encode_window,
)
from .vocoder import SAMPLE_RATE, SAMPLES_PER_FRAME, Vocoder, VocoderGraphs

LOOKAHEAD_TOKENS = 3
TOKEN_MEL_RATIO = 2
LEFT = 16  # mel frames of left context for the vocoder
HOLD = 6  # mel frames held back until their right context exists
XFADE = 240  # samples cross-faded at each join (10 ms)
NOISE_FRAMES = 512  # the source-noise table: about 10 s, indexed by absolute frame
SILENCE_TOKEN = 4299  # S3GEN_SIL: appended (x3) at the end, as the stock pipeline does
VOCODER_FRAME_STEP = 32  # vocoder windows are padded to a multiple of this many frames
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


class FlowGraphs(BucketGraphs):
    """CUDA graphs of the whole meanflow solve over generated frames, per (batch, frames) bucket.

    The voice's reference states (``Tape``s) are graph inputs: static buffers,
    padded to ``ref_frames`` keys, refilled when a batch of another voice comes.
    Padding (batch rows, frames, reference keys) is masked exactly.
    """

    def __init__(self, est: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                 batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32), frame_step: int = 32,
                 ref_frames: int = 512) -> None:
        super().__init__(device, batches, frame_step, "flow")
        self.est = est
        self.dtype = dtype
        self.ref_frames = ref_frames
        self.tapes: list[Tape] | None = None  # static reference states read by every graph
        self.loaded: object = None  # the voice whose states are in ``tapes``

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
                static.fill_buffers()
        self.loaded = voice

    def _inputs(self, b: int, t: int) -> dict[str, torch.Tensor]:
        if self.tapes is None:
            raise RuntimeError("FlowGraphs: load a voice before capturing")
        d, dt = self.device, self.dtype
        ins = dict(z=torch.zeros(b, 80, t, device=d, dtype=dt), mask=torch.zeros(b, 1, t, device=d, dtype=dt),
                   mu=torch.zeros(b, 80, t, device=d, dtype=dt), spks=torch.zeros(b, 80, device=d, dtype=dt))
        ins["mask"][:, :, :1] = 1
        return ins

    def _run(self, **ins: torch.Tensor) -> torch.Tensor:
        return solve_meanflow_cached(self.est, self.tapes, **ins)

    def capture_all(self, max_frames: int) -> None:
        if self.tapes is None:
            raise RuntimeError("FlowGraphs: load a voice before capturing")
        frames = self.bucket(1, max_frames)[1]
        for tape in self.tapes:
            if tape.buffers is None:  # before any capture: every graph writes into the same buffers
                tape.attach_buffers(self.batches[-1], frames)
        super().capture_all(max_frames)

    def __call__(self, voice: "VoiceGen", z: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor,
                 spks: torch.Tensor) -> torch.Tensor:
        self.load_voice(voice)
        b, _, t = z.shape
        _, graph, ins, out = self.entry(b, t)
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
    encoder_ref: EncoderReference | None = None  # the reference's encoder keys/values (flow_encoder)


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
    tail: np.ndarray | None = None  # held-back audio of the last window, from frame emitted_frames
    phase_at: dict[int, torch.Tensor] = field(default_factory=dict)  # frame → harmonic phase there (cycles)
    started: bool = False

    def mel_range(self, start: int, end: int) -> torch.Tensor:
        allm = torch.cat(self.mel, dim=1) if len(self.mel) > 1 else self.mel[0]
        self.mel = [allm]
        return allm[:, start:end]


@dataclass
class PendingAudio:
    """One batch of windows on its way to the host: ready when ``event`` has completed."""

    parts: list[tuple[list[int], list[UtteranceAudio], list[tuple[int, int, int]], list[int], torch.Tensor]]
    size: int  # utterances in the batch
    event: torch.cuda.Event | None = None  # None: already on the host (CPU, or no stream)
    started: torch.cuda.Event | None = None  # recorded before the batch's first kernel (``launch``)

    def done(self) -> bool:
        return self.event is None or self.event.query()

    def gpu_seconds(self) -> float | None:
        """The batch's time on its stream, first kernel to host copy (after ``collect``)."""
        if self.started is None or self.event is None:
            return None
        return self.started.elapsed_time(self.event) / 1000


@dataclass
class FlowJob:
    utt: UtteranceAudio
    tokens: torch.Tensor  # all generated speech tokens so far [N] (long, on device)
    final: bool


class S3GenStreamer:
    def __init__(self, s3gen: torch.nn.Module, device: str | torch.device = "cpu",
                 flow_dtype: torch.dtype = torch.float32, hift_dtype: torch.dtype = torch.float32,
                 cuda_graphs: bool = True, reference_cache: bool = True, context_tokens: int = CONTEXT_TOKENS,
                 overlap: bool = False) -> None:
        self.device = torch.device(device)
        # its own stream (default priority: T3's stream outranks it), see "Overlap" above
        self.stream = torch.cuda.Stream(self.device) if overlap and self.device.type == "cuda" else None
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
        harmonics = self.hift.m_source.l_sin_gen.harmonic_num + 1
        g = torch.Generator(device="cpu").manual_seed(1234)
        noise_table = torch.randn(harmonics, NOISE_FRAMES * SAMPLES_PER_FRAME, generator=g)
        self.vocoder = Vocoder(self.hift, self.device, noise_table)
        self.max_vocoder_batch = 32
        n_trim = SAMPLE_RATE // 50
        fade = np.zeros(2 * n_trim, dtype=np.float32)
        fade[n_trim:] = (np.cos(np.linspace(np.pi, 0, n_trim)) + 1) / 2
        self.trim_fade = fade  # the stock pipeline's fade-in of the first 40 ms
        self.xfade = np.linspace(0.0, 1.0, XFADE, dtype=np.float32)
        check_encoder_supported(self.flow.encoder)
        if reference_cache:
            check_supported(self.flow.decoder.estimator)
        self.graphs = FlowGraphs(self.flow.decoder.estimator, self.device, flow_dtype) \
            if cuda_graphs and reference_cache and self.device.type == "cuda" else None
        self.encoder_graphs = WindowEncoderGraphs(self.flow, self.device) \
            if cuda_graphs and reference_cache and self.device.type == "cuda" else None
        self.vocoder_graphs = VocoderGraphs(self.vocoder, frame_step=VOCODER_FRAME_STEP) \
            if cuda_graphs and self.device.type == "cuda" else None

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

    def capture_graphs(self, voice: VoiceGen, window_tokens: int) -> None:
        """Every CUDA graph (estimator, encoder, vocoder) a window of <= ``window_tokens`` new tokens can hit."""
        if self.graphs is not None:
            self.graphs.load_voice(voice)
            self.graphs.capture_all(TOKEN_MEL_RATIO * (self.context_tokens + window_tokens + LOOKAHEAD_TOKENS))
        if self.encoder_graphs is not None:
            self.encoder_graphs.load_voice(voice.encoder_ref)
            self.encoder_graphs.capture_all(self.context_tokens + window_tokens + 2 * LOOKAHEAD_TOKENS)
        if self.vocoder_graphs is not None:
            self.vocoder_graphs.capture_all(LEFT + HOLD + TOKEN_MEL_RATIO * (window_tokens + 2 * LOOKAHEAD_TOKENS))

    # -- per voice / per utterance --------------------------------------------------
    @torch.inference_mode()
    def prepare_voice(self, gen: dict, seed: int = 0) -> VoiceGen:
        token = torch.as_tensor(gen["prompt_token"]).to(self.device).view(-1).long()
        feat = torch.as_tensor(gen["prompt_feat"]).to(self.device, self.flow_dtype).view(-1, 80)
        n = min(token.numel(), feat.size(0) // TOKEN_MEL_RATIO)  # two frames a token, as stock's embed_ref makes them
        token, feat = token[:n], feat[:TOKEN_MEL_RATIO * n]
        emb = torch.as_tensor(gen["embedding"]).to(self.device, self.flow_dtype).view(1, -1)
        spk = self.flow.spk_embed_affine_layer(F.normalize(emb, dim=1))[0]
        g = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(80, feat.size(0), generator=g).to(self.device, self.flow_dtype)
        voice = VoiceGen(token, feat, spk, noise)
        if self.reference_cache:
            # The reference alone through the encoder and every meanflow step: its share of
            # each window's work, done once (flow_cache and flow_encoder explain why).
            mu = self._encode([token])[0]
            voice.tapes = record_voice(self.flow.decoder.estimator, noise, mu, spk, feat.t())
            voice.encoder_ref = encode_reference(self.flow, token)
        return voice

    def _padded(self, seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token sequences as a right-padded batch [B, longest] and their lengths [B]."""
        lens = [q.numel() for q in seqs]
        tokens = torch.zeros(len(seqs), max(lens), dtype=torch.long, device=self.device)
        for i, q in enumerate(seqs):
            tokens[i, :lens[i]] = q
        return tokens, torch.tensor(lens).to(self.device)

    def _encode(self, seqs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The flow encoder over token sequences (right-padded batch): [80, 2*len] each."""
        h = encode_tokens(self.flow, *self._padded(seqs))
        return [h[i, :, :2 * q.numel()] for i, q in enumerate(seqs)]

    def _encode_windows(self, voice: VoiceGen, seqs: list[torch.Tensor]) -> torch.Tensor:
        """Window tokens after the voice's reference (right-padded batch) → ``mu`` [B, 80, 2 * longest]."""
        tokens, token_len = self._padded(seqs)
        if self.encoder_graphs is not None:
            return self.encoder_graphs(voice.encoder_ref, tokens, token_len)
        return encode_window(self.flow, voice.encoder_ref, tokens, token_len)

    @torch.inference_mode()
    def vocoder_snr_db(self, mel: torch.Tensor) -> float:
        """The vocoder at its precision against float32 on ``mel`` [F, 80], a voice's reference
        (real weights, real mel: what a lower precision costs this checkpoint), in dB."""
        mel = torch.as_tensor(mel).to(self.device, torch.float32).view(-1, 80).t()[None]  # [1, 80, F]
        b, h = 1, self.vocoder.harmonics
        args = (torch.zeros(b, h, device=self.device, dtype=torch.float64),
                torch.zeros(b, h, device=self.device, dtype=torch.float64),
                torch.zeros(b, device=self.device, dtype=torch.long), torch.ones(b, device=self.device, dtype=torch.long))
        ref = Vocoder(_on(self.s3gen.mel2wav, self.device, torch.float32), self.device, self.vocoder.noise_table)
        want = ref(mel, *args)[0].double()
        got = self.vocoder(mel, *args)[0].double()
        err = float(((got - want) ** 2).sum())
        if not math.isfinite(err):
            return float("-inf")
        return 10 * math.log10(float((want ** 2).sum()) / err) if err > 0 else float("inf")

    @property
    def overlaps(self) -> bool:
        """True when ``launch`` returns before the GPU has finished (not while profiling)."""
        return self.stream is not None and not self.profile

    def new_utterance(self, voice: VoiceGen, seed: int, max_tokens: int) -> UtteranceAudio:
        g = torch.Generator(device="cpu").manual_seed(seed)
        phase0 = (torch.rand(self.vocoder.harmonics, generator=g) * 2 - 1) * np.pi
        phase0[0] = 0
        offset = int(torch.randint(0, NOISE_FRAMES, (1,), generator=g))
        frames = TOKEN_MEL_RATIO * (max_tokens + 8)
        # The flow's initial noise is drawn where it is used: on the host it cost ~0.3 ms an
        # utterance, 10 ms for a burst of 32 admitted together, while the GPU waited.
        gd = torch.Generator(device=self.device).manual_seed(seed)
        with torch.cuda.stream(self.stream):  # (None: a no-op) on the stream that will read them
            noise = torch.randn(80, frames, generator=gd, device=self.device).to(self.flow_dtype)
            return UtteranceAudio(voice, seed, noise, phase0.to(self.device), offset)

    # -- a batch of windows: flow, then vocoder, enqueued on the streamer's stream ---
    @torch.inference_mode()
    def launch(self, jobs: list[FlowJob]) -> PendingAudio:
        """Enqueue the flow and the vocoder for ``jobs``; the audio is collected with ``collect``."""
        with torch.cuda.stream(self.stream):
            started = None
            if self.device.type == "cuda":
                started = torch.cuda.Event(enable_timing=True)
                started.record()
            self.flow_batch(jobs)
            pending = self._vocode_launch([j.utt for j in jobs], [j.final for j in jobs])
            if started is not None and pending.event is None:  # nothing to vocode: still an end to wait on
                pending.event = torch.cuda.Event(enable_timing=True)
                pending.event.record()
            pending.started = started
            return pending

    def collect(self, pending: PendingAudio) -> list[np.ndarray]:
        """The new audio of each utterance of a launched batch (waits for the GPU if not done)."""
        if pending.event is not None:
            pending.event.synchronize()
        out = [np.zeros(0, dtype=np.float32)] * pending.size
        for index, utts, plans, sizes, host in pending.parts:
            flat = host.numpy()
            at = 0
            for i, u, (start, end, ready), n in zip(index, utts, plans, sizes):
                out[i] = self._emit(u, flat[at:at + n], (ready - u.emitted_frames) * SAMPLES_PER_FRAME, ready)
                at += n
        return out

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

        The encoder and the estimator both get the reference from the voice's caches
        (``encoder_ref``, ``tapes``): a window runs only its own tokens and frames.
        Returns (first absolute frame, mel [80, n]) per job.
        """
        self._phase(None)
        starts = [max(0, j.utt.mel_done // TOKEN_MEL_RATIO - self.context_tokens) for j, _, _ in live]
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
            mus = self._encode_windows(voice, [live[i][0].tokens[starts[i]:live[i][1]] for i in members])
            self._phase("encoder")
            z = torch.zeros(b, 80, tmax, device=self.device, dtype=self.flow_dtype)
            for row, (i, g) in enumerate(zip(members, gen)):
                first = TOKEN_MEL_RATIO * starts[i]
                z[row, :, :g] = live[i][0].utt.noise[:, first:first + g]
            lens = torch.tensor(gen, device=self.device)
            mask = (torch.arange(tmax, device=self.device)[None, :] < lens[:, None]).unsqueeze(1).to(z.dtype)
            mu = mus[:, :, :tmax] * mask  # each row's generated frames, zeros after them
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
        x = solve_meanflow(flow.decoder.estimator, z, mask, mu, spks, conds, n_steps)  # (graphs need the cache)
        return [x[i, :, 2 * tp[i]:dec_len[i]].float() for i in range(b)]

    # -- vocoder: mel → audio ------------------------------------------------------
    def source_for(self, f0: torch.Tensor, utts: list[UtteranceAudio], start_frames: list[int]) -> torch.Tensor:
        """The excitation [B, 1, samples] for windows of ``utts`` starting at ``start_frames``."""
        start_phase, phase0, noise_start = self._source_state(utts, start_frames)
        keep = torch.ones(len(utts), dtype=torch.long, device=self.device)
        return self.vocoder.source(f0, start_phase, phase0, noise_start, keep)[0]

    def _source_state(self, utts: list[UtteranceAudio], start_frames: list[int]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zero = torch.zeros(self.vocoder.harmonics, device=self.device, dtype=torch.float64)
        start_phase = torch.stack([u.phase_at.get(s, zero) for u, s in zip(utts, start_frames)])
        phase0 = torch.stack([u.phase0 for u in utts]).double()
        noise_start = torch.tensor([(s + u.noise_offset) * SAMPLES_PER_FRAME for u, s in zip(utts, start_frames)],
                                   dtype=torch.long).to(self.device)
        return start_phase, phase0, noise_start

    @torch.inference_mode()
    def vocode(self, utts: list[UtteranceAudio], final: list[bool]) -> list[np.ndarray]:
        """Audio (float32, 24 kHz) newly ready for each utterance, from the mel produced so far.

        Every window — an utterance's last included — runs in one batch, right-padded to
        a bucket of ``VOCODER_FRAME_STEP`` frames (the bucket's CUDA graph on a GPU) by
        repeating the window's last frame: what the padding changes lies within the
        ``HOLD`` frames, held back anyway, or after a last window's end, in its trailing
        silence. The new audio of the whole batch comes to the host in one copy; the
        joins (cross-fade, first fade-in) are done there.
        """
        with torch.cuda.stream(self.stream):
            return self.collect(self._vocode_launch(utts, final))

    def _vocode_launch(self, utts: list[UtteranceAudio], final: list[bool]) -> PendingAudio:
        plans = []
        for i, (u, fin) in enumerate(zip(utts, final)):
            end = u.mel_done
            ready = end if fin else end - HOLD
            if ready > u.emitted_frames:
                plans.append((i, max(0, u.emitted_frames - LEFT), end, ready))
        self._phase(None)
        pending = PendingAudio([], len(utts))
        for at in range(0, len(plans), self.max_vocoder_batch):
            part = plans[at:at + self.max_vocoder_batch]
            index = [p[0] for p in part]
            chosen = [utts[i] for i in index]
            spans = [p[1:] for p in part]
            sizes, host = self._vocode_batch(chosen, spans)
            pending.parts.append((index, chosen, spans, sizes, host))
        if self.device.type == "cuda" and pending.parts:
            pending.event = torch.cuda.Event(enable_timing=True)
            pending.event.record()
        self._phase("vocoder")
        return pending

    def _vocode_batch(self, utts: list[UtteranceAudio], plans: list[tuple[int, int, int]]) -> tuple[list[int], torch.Tensor]:
        """Enqueue one vocoder batch; its new audio (held-back tail included) goes to one host tensor."""
        b = len(utts)
        longest = max(end - start for start, end, _ in plans)
        if self.vocoder_graphs is not None:
            key, ins = self.vocoder_graphs.inputs(b, longest)
            mel = ins["mel"]
        else:  # the same padding to a bucket of frames, so a CPU run checks what the graphs get
            key = None
            frames = -(-longest // VOCODER_FRAME_STEP) * VOCODER_FRAME_STEP
            mel = torch.empty(b, 80, frames, device=self.device, dtype=self.vocoder.dtype)
        for row, (u, (start, end, _)) in enumerate(zip(utts, plans)):
            m = u.mel_range(start, end)
            mel[row, :, :end - start] = m
            mel[row, :, end - start:] = m[:, -1:]
        start_phase, phase0, noise_start = self._source_state(utts, [p[0] for p in plans])
        # the next window starts LEFT frames before this one's ready point: remember the phase there
        keep = [max(0, ready - LEFT) for _, _, ready in plans]
        keep_frame = torch.tensor([k - start for k, (start, _, _) in zip(keep, plans)], dtype=torch.long)
        if key is not None:
            ins["start_phase"][:b] = start_phase
            ins["phase0"][:b] = phase0
            ins["noise_start"][:b] = noise_start
            ins["keep_frame"][:b] = keep_frame.to(self.device)
            audio, keep_phase = self.vocoder_graphs.replay(key)
        else:
            audio, keep_phase = self.vocoder(mel, start_phase, phase0, noise_start, keep_frame.to(self.device))
        keep_phase = keep_phase[:b].clone()
        segments = []
        for row, (u, (start, end, ready), k) in enumerate(zip(utts, plans, keep)):
            segments.append(audio[row, (u.emitted_frames - start) * SAMPLES_PER_FRAME:(end - start) * SAMPLES_PER_FRAME])
            u.phase_at = {k: keep_phase[row]} if start < k <= end else {}
        flat = torch.cat(segments)
        if self.device.type == "cuda":  # pinned: the copy is asynchronous, ordered after the batch
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
        else:
            host = flat
        return [seg.numel() for seg in segments], host

    def _emit(self, u: UtteranceAudio, piece: np.ndarray, n_new: int, ready: int) -> np.ndarray:
        """Host side of a window: cross-fade into the held tail, fade in the first audio."""
        new = piece[:n_new].copy()
        if u.tail is not None and new.size:
            k = min(XFADE, new.size, u.tail.size)
            new[:k] = u.tail[:k] * (1 - self.xfade[:k]) + new[:k] * self.xfade[:k]
        if not u.started and new.size:
            k = min(self.trim_fade.size, new.size)
            new[:k] *= self.trim_fade[:k]
            u.started = True
        u.tail = piece[n_new:].copy()
        u.emitted_frames = ready
        return new
