"""HiFT as one capturable function of tensors: mel + source state → audio + next source state.

Why: the stock vocoder is a few hundred small kernels launched from Python
(its Snake activations alone are five each), so at a batch of ten windows it
cost ~30 ms of the GPU worker's time for ~2 ms of GPU work. Made free of host
syncs and per-row Python, the whole window batch — F0 predictor, harmonic
source, decoder, iSTFT — is one CUDA graph replay per (batch, frames) bucket.

Stock pieces replaced by equal arithmetic that a graph can hold, or that runs faster:

* the STFT of the source and the final iSTFT (n_fft 16, hop 4): torch.istft
  checks its window envelope with ``.item()``, a host sync that a capture
  refuses. Here both are a 16-point DFT as a matrix product, framing by
  ``unfold`` and overlap-add by ``fold`` (exact index sums). Equal to torch's
  to float32 rounding (tested).
* the harmonic source: per-utterance phase bookkeeping becomes tensors
  (phase at the window's first frame in, phase at the next window's first
  frame out). Within one mel frame F0 is constant (nearest upsampling), so the
  running phase is accumulated per frame in float64 and only the in-frame ramp
  is per sample, in float32.
* the residual blocks' Snake activations: one fused kernel each on a GPU
  (``snake``), the same formula (tested against the stock module).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .bucket_graphs import BucketGraphs
from .snake import resblock

SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = 480  # HiFT: 8 * 5 * 3 upsampling * 4 iSTFT hop


class Dft16:
    """The HiFT STFT/iSTFT (centered, reflect padding, periodic Hann) as matrix products."""

    def __init__(self, n_fft: int, hop: int, window: torch.Tensor) -> None:
        self.n_fft, self.hop = n_fft, hop
        self.bins = n_fft // 2 + 1
        t = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(self.bins, dtype=torch.float64)
        ang = 2 * math.pi * t[:, None] * k[None, :] / n_fft  # [n_fft, bins]
        w = window.double()
        # forward: frame [n_fft] → [re(bins), im(bins)], window folded in
        self.fwd = torch.cat([torch.cos(ang), -torch.sin(ang)], dim=1) * w[:, None]
        # inverse (one-sided irfft) then window: [re, im] → frame [n_fft]
        scale = torch.full((self.bins,), 2.0, dtype=torch.float64)
        scale[0] = 1.0
        if n_fft % 2 == 0:
            scale[-1] = 1.0
        inv = torch.cat([torch.cos(ang) * scale, -torch.sin(ang) * scale], dim=1).t() / n_fft  # [2*bins, n_fft]
        self.inv = inv * w[None, :]
        self.win_sq = (w * w).float()

    def to(self, device: torch.device, dtype: torch.dtype) -> "Dft16":
        self.fwd = self.fwd.to(device, dtype)
        self.inv = self.inv.to(device, dtype)
        self.win_sq = self.win_sq.to(device, dtype)
        return self

    def stft(self, x: torch.Tensor) -> torch.Tensor:
        """[B, n] → [B, 2*bins, n/hop + 1]: real parts then imaginary parts (stock's layout)."""
        pad = self.n_fft // 2
        frames = F.pad(x[:, None], (pad, pad), mode="reflect")[:, 0].unfold(-1, self.n_fft, self.hop)
        return (frames @ self.fwd).transpose(1, 2)

    def istft(self, re_im: torch.Tensor) -> torch.Tensor:
        """[B, 2*bins, TT] → [B, hop*(TT-1)], as torch.istft(center=True) computes it."""
        b, _, tt = re_im.shape
        frames = (re_im.transpose(1, 2) @ self.inv).transpose(1, 2)  # [B, n_fft, TT], windowed
        length = self.n_fft + self.hop * (tt - 1)
        kw = dict(output_size=(1, length), kernel_size=(1, self.n_fft), stride=(1, self.hop))
        y = F.fold(frames, **kw)[:, 0, 0]
        env = F.fold(self.win_sq[None, :, None].expand(1, -1, tt), **kw)[:, 0, 0]
        pad = self.n_fft // 2
        return y[:, pad:length - pad] / env[:, pad:length - pad]


def hift_decode(hift: torch.nn.Module, dft: Dft16, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The stock ``HiFTGenerator.decode`` with ``Dft16`` in place of torch.stft/istft and one-kernel Snakes."""
    s_stft = dft.stft(s.squeeze(1))
    x = hift.conv_pre(x)
    for i in range(hift.num_upsamples):
        x = F.leaky_relu(x, hift.lrelu_slope)
        x = hift.ups[i](x)
        if i == hift.num_upsamples - 1:
            x = hift.reflection_pad(x)
        si = resblock(hift.source_resblocks[i], hift.source_downs[i](s_stft))
        x = x + si
        xs = None
        for j in range(hift.num_kernels):
            r = resblock(hift.resblocks[i * hift.num_kernels + j], x)
            xs = r if xs is None else xs + r
        x = xs / hift.num_kernels
    x = F.leaky_relu(x)
    x = hift.conv_post(x)
    bins = dft.bins
    magnitude = torch.clip(torch.exp(x[:, :bins, :]), max=1e2)
    phase = torch.sin(x[:, bins:, :])
    audio = dft.istft(torch.cat([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], dim=1))
    return torch.clamp(audio, -hift.audio_limit, hift.audio_limit)


class Vocoder:
    """mel windows → audio, with the neural source continuous across windows.

    ``__call__`` takes only tensors and returns only tensors, so it can be
    captured whole (``VocoderGraphs``) or run eagerly (CPU, tests).
    """

    def __init__(self, hift: torch.nn.Module, device: torch.device, noise_table: torch.Tensor) -> None:
        self.hift = hift
        self.device = device
        src = hift.m_source
        self.harmonics = src.l_sin_gen.harmonic_num + 1
        self.sine_amp = src.l_sin_gen.sine_amp
        self.noise_std = src.l_sin_gen.noise_std
        self.voiced_threshold = src.l_sin_gen.voiced_threshold
        self.dtype = next(hift.parameters()).dtype
        self.noise_table = noise_table.to(device, torch.float32)  # [H, samples]
        self.mult = torch.arange(1, self.harmonics + 1, device=device, dtype=torch.float64)
        self.ramp = torch.arange(1, SAMPLES_PER_FRAME + 1, device=device, dtype=torch.float32)
        window = hift.stft_window if torch.is_tensor(hift.stft_window) else torch.as_tensor(hift.stft_window)
        self.dft = Dft16(hift.istft_params["n_fft"], hift.istft_params["hop_len"], window.cpu()).to(device, self.dtype)

    def source(self, f0: torch.Tensor, start_phase: torch.Tensor, phase0: torch.Tensor, noise_start: torch.Tensor,
               keep_frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Harmonic-plus-noise excitation [B, 1, frames*480] and the phase at frame ``keep_frame``.

        start_phase [B, H] float64: cycles at the window's first sample; phase0 [B, H]: the
        utterance's random initial phase; noise_start [B]: the window's first sample in the
        noise table; keep_frame [B]: a frame index (1..frames) whose starting phase is returned.
        """
        b, frames = f0.shape
        h = self.harmonics
        per_sample = f0.double()[:, None, :] * self.mult[None, :, None] / SAMPLE_RATE  # [B, H, F] cycles
        ends = torch.cumsum(per_sample * SAMPLES_PER_FRAME, dim=-1) + start_phase[:, :, None]
        begins = torch.cat([start_phase[:, :, None], ends[..., :-1]], dim=-1) % 1.0
        at = (keep_frame - 1).clamp(0, frames - 1)[:, None, None].expand(b, h, 1)
        keep_phase = ends.gather(2, at)[..., 0] % 1.0
        cycles = begins.float()[..., None] + per_sample.float()[..., None] * self.ramp  # [B, H, F, 480]
        theta = 2 * math.pi * cycles.reshape(b, h, -1) + phase0.float()[:, :, None]
        sine = self.sine_amp * torch.sin(theta)
        uv = (f0 > self.voiced_threshold).float().repeat_interleave(SAMPLES_PER_FRAME, dim=1)[:, None, :]
        noise_amp = uv * self.noise_std + (1 - uv) * (self.sine_amp / 3)
        total = self.noise_table.size(1)
        n = frames * SAMPLES_PER_FRAME
        idx = (torch.arange(n, device=f0.device)[None, :] + noise_start[:, None]) % total  # [B, n]
        noise = self.noise_table[:, idx].permute(1, 0, 2)  # [B, H, n]
        waves = (sine * uv + noise_amp * noise).to(self.dtype).transpose(1, 2)  # [B, n, H]
        lin = self.hift.m_source.l_linear
        return torch.tanh(lin(waves)).transpose(1, 2), keep_phase

    def __call__(self, mel: torch.Tensor, start_phase: torch.Tensor, phase0: torch.Tensor, noise_start: torch.Tensor,
                 keep_frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel [B, 80, F] → (audio [B, F*480] float32, phase at ``keep_frame`` [B, H] float64)."""
        mel = mel.to(self.dtype)
        f0 = self.hift.f0_predictor(mel)
        s, keep_phase = self.source(f0, start_phase, phase0, noise_start, keep_frame)
        return hift_decode(self.hift, self.dft, mel, s).float(), keep_phase


class VocoderGraphs(BucketGraphs):
    """``Vocoder`` captured per (batch, frames) bucket; padding rows and frames are the caller's."""

    def __init__(self, vocoder: Vocoder, batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32), frame_step: int = 32) -> None:
        super().__init__(vocoder.device, batches, frame_step, "vocoder")
        self.vocoder = vocoder

    def _inputs(self, b: int, frames: int) -> dict[str, torch.Tensor]:
        v, d = self.vocoder, self.vocoder.device
        return dict(mel=torch.full((b, 80, frames), -5.0, device=d, dtype=v.dtype),
                    start_phase=torch.zeros(b, v.harmonics, device=d, dtype=torch.float64),
                    phase0=torch.zeros(b, v.harmonics, device=d, dtype=torch.float64),
                    noise_start=torch.zeros(b, device=d, dtype=torch.long),
                    keep_frame=torch.ones(b, device=d, dtype=torch.long))

    def _run(self, **ins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vocoder(**ins)

    def inputs(self, b: int, frames: int) -> tuple[tuple[int, int], dict[str, torch.Tensor]]:
        """The static input buffers of the bucket for (b, frames), to be filled by the caller."""
        key, _, ins, _ = self.entry(b, frames)
        return key, ins

    def replay(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        graph, _, out = self.graphs[key]
        graph.replay()
        return out
