"""The reference's share of the flow decoder, computed once per voice.

Stock S3Gen runs its flow decoder (the meanflow estimator: causal convolutions,
per-frame norms and global self-attention) over the 10 s voice reference and
the generated frames together, so every streaming window pays for 500
reference frames again. Here the reference is made *block-causal*: its frames
attend only to reference frames (generated frames still attend to everything).
Then every state of the reference inside the estimator depends on the voice
alone, and a window needs only:

* for each causal convolution, the last ``kernel - 1`` input frames of the
  reference (its left context), and
* for each self-attention, the reference's keys and values,

per meanflow step. ``record_voice`` computes them once (a ``Tape`` per step);
``estimator_forward_cached`` then runs the estimator over the generated frames
alone, prepending those states. The result equals a full pass with a
block-causal mask exactly (tested); against stock's full attention the audio
differs by what the reference would have learnt from the generated frames
(measured: tests/test_chatterbox.py prints the SNR).

The walk below calls the stock submodules (convolutions, norms, projections,
feed-forwards) in the stock order; only the wiring between them is ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class Tape:
    """Per-voice estimator states of one meanflow step, in call order."""

    conv_tails: list[torch.Tensor] = field(default_factory=list)  # [1, C, k-1] each
    keys: list[torch.Tensor] = field(default_factory=list)  # [1, heads, Tr, d] each
    values: list[torch.Tensor] = field(default_factory=list)
    key_bias: torch.Tensor | None = None  # [1, 1, 1, Tr]: 0 for real reference frames, -1e10 for padding
    # Optional per attention: [batch, heads, Tr + frames, d] key and value buffers whose first Tr
    # positions hold the reference (``attach_buffers``); a window writes its own keys after them.
    buffers: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def frames(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def padded(self, frames: int) -> "Tape":
        """The same states with the reference padded to ``frames`` keys (padding masked)."""
        pad = frames - self.frames
        if pad < 0:
            raise ValueError(f"voice reference of {self.frames} frames exceeds {frames}")
        bias = torch.zeros(1, 1, 1, frames, device=self.keys[0].device, dtype=self.keys[0].dtype)
        bias[..., self.frames:] = -1.0e10
        return Tape(list(self.conv_tails), [F.pad(k, (0, 0, 0, pad)) for k in self.keys],
                    [F.pad(v, (0, 0, 0, pad)) for v in self.values], bias)

    def attach_buffers(self, batch: int, frames: int) -> None:
        """Key/value buffers for windows of up to ``batch`` rows and ``frames`` generated frames.

        Without them every attention of every window concatenates the reference's keys and
        values (expanded to the batch) with the window's: at a batch of 32 that copy was
        half of the estimator's GPU time (benchmarks/results/s3gen_profile.md). With them
        the reference is written once (``fill_buffers``, per voice) and a window writes only
        its own keys. Memory: 2 x layers x batch x (Tr + frames) x width per meanflow step.
        """
        self.buffers = []
        for k in self.keys:
            _, heads, tr, d = k.shape
            shape = (batch, heads, tr + frames, d)
            self.buffers.append((torch.zeros(shape, device=k.device, dtype=k.dtype),
                                 torch.zeros(shape, device=k.device, dtype=k.dtype)))
        self.fill_buffers()

    def fill_buffers(self) -> None:
        """Write the reference's keys and values into every row of the buffers."""
        for (kb, vb), k, v in zip(self.buffers or [], self.keys, self.values):
            tr = k.shape[2]
            kb[:, :, :tr] = k
            vb[:, :, :tr] = v


class _Walk:
    """One pass of the estimator: records a tape (the reference) or replays one (generated frames)."""

    def __init__(self, tape: Tape, record: bool) -> None:
        self.tape = tape
        self.record = record
        self.conv_i = 0
        self.attn_i = 0

    def conv(self, conv: torch.nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        """A CausalConv1d, with the reference's last input frames as its left context."""
        k = conv.kernel_size[0]
        if self.record:
            self.tape.conv_tails.append(x[:, :, x.shape[-1] - (k - 1):].clone())
            return conv(x)
        left = self.tape.conv_tails[self.conv_i]
        self.conv_i += 1
        x = torch.cat([left.expand(x.shape[0], -1, -1), x], dim=-1)
        return F.conv1d(x, conv.weight, conv.bias)

    def block1d(self, blk: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        conv, _, norm, _, act = blk.block  # CausalBlock1D: conv, transpose, LayerNorm, transpose, Mish
        h = self.conv(conv, x * mask)
        h = act(norm(h.transpose(1, 2)).transpose(1, 2))
        return h * mask

    def resnet(self, res: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.block1d(res.block1, x, mask)
        h = h + res.mlp(temb).unsqueeze(-1)
        h = self.block1d(res.block2, h, mask)
        return h + res.res_conv(x * mask)

    def transformer(self, blk: torch.nn.Module, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """BasicTransformerBlock (self-attention + feed-forward); ``h`` is [B, T, C]."""
        attn = blk.attn1
        b, t, _ = h.shape
        n = blk.norm1(h)
        heads = attn.heads
        q = attn.to_q(n).view(b, t, heads, -1).transpose(1, 2)
        k = attn.to_k(n).view(b, t, heads, -1).transpose(1, 2)
        v = attn.to_v(n).view(b, t, heads, -1).transpose(1, 2)
        if self.record:
            self.tape.keys.append(k.clone())
            self.tape.values.append(v.clone())
        else:
            kr = self.tape.keys[self.attn_i]
            vr = self.tape.values[self.attn_i]
            tr = kr.shape[2]
            if self.tape.buffers is not None:  # the reference is in place: write the window after it
                kb, vb = self.tape.buffers[self.attn_i]
                kb[:b, :, tr:tr + t] = k
                vb[:b, :, tr:tr + t] = v
                k, v = kb[:b, :, :tr + t], vb[:b, :, :tr + t]
            else:
                k = torch.cat([kr.expand(b, -1, -1, -1), k], dim=2)
                v = torch.cat([vr.expand(b, -1, -1, -1), v], dim=2)
            self.attn_i += 1
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
        o = attn.to_out[0](o.transpose(1, 2).reshape(b, t, -1))
        h = h + attn.to_out[1](o)
        return h + blk.ff(blk.norm3(h))

    def estimator(self, est: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor,
                  t: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        temb = est.time_mlp(est.time_embeddings(t).to(t.dtype))
        if est.meanflow:
            remb = est.time_mlp(est.time_embeddings(r).to(t.dtype))
            temb = est.time_embed_mixer(torch.cat([temb, remb], dim=1))
        bias = ((1.0 - mask.to(x.dtype)) * -1.0e10)[:, None]  # [B, 1, 1, T]: key padding
        if not self.record:  # replaying: the reference's keys come first in every attention
            ref_bias = self.tape.key_bias if self.tape.key_bias is not None else \
                torch.zeros(1, 1, 1, self.tape.frames, device=x.device, dtype=bias.dtype)
            bias = torch.cat([ref_bias.expand(x.shape[0], -1, -1, -1), bias], dim=-1)
        h = torch.cat([x, mu, spks[:, :, None].expand(-1, -1, x.shape[-1]), cond], dim=1)
        hiddens = []
        for resnet, blocks, downsample in est.down_blocks:
            h = self.resnet(resnet, h, mask, temb)
            h = h.transpose(1, 2)
            for blk in blocks:
                h = self.transformer(blk, h, bias)
            h = h.transpose(1, 2)
            hiddens.append(h)
            h = self.conv(downsample, h * mask)
        for resnet, blocks in est.mid_blocks:
            h = self.resnet(resnet, h, mask, temb)
            h = h.transpose(1, 2)
            for blk in blocks:
                h = self.transformer(blk, h, bias)
            h = h.transpose(1, 2)
        for resnet, blocks, upsample in est.up_blocks:
            skip = hiddens.pop()
            h = torch.cat([h[:, :, :skip.shape[-1]], skip], dim=1)
            h = self.resnet(resnet, h, mask, temb)
            h = h.transpose(1, 2)
            for blk in blocks:
                h = self.transformer(blk, h, bias)
            h = h.transpose(1, 2)
            h = self.conv(upsample, h * mask)
        h = self.block1d(est.final_block, h, mask)
        return est.final_proj(h * mask) * mask


def check_supported(est: torch.nn.Module) -> None:
    """The walk assumes the Turbo estimator's shape: one resolution level, causal, no cross-attention."""
    problems = []
    if not getattr(est, "causal", False):
        problems.append("estimator is not causal")
    if len(est.down_blocks) != 1 or len(est.up_blocks) != 1:
        problems.append("more than one resolution level")
    for blk in est.modules():
        if type(blk).__name__ == "BasicTransformerBlock" and (blk.attn2 is not None or blk.only_cross_attention
                                                               or blk.use_ada_layer_norm or blk.use_ada_layer_norm_zero):
            problems.append("transformer block with cross-attention or adaptive norms")
            break
    for conv in (est.down_blocks[0][2], est.up_blocks[0][2]):
        if type(conv).__name__ != "CausalConv1d":
            problems.append("down/up sampling is not a causal convolution")
    if problems:
        raise ValueError("reference cache unsupported for this checkpoint: " + "; ".join(problems))


def _times(b: int, i: int, n_steps: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.full((b,), i / n_steps, device=like.device, dtype=like.dtype)
    r = torch.full((b,), (i + 1) / n_steps, device=like.device, dtype=like.dtype)
    return t, r


@torch.inference_mode()
def record_voice(est: torch.nn.Module, noise: torch.Tensor, mu: torch.Tensor, spk: torch.Tensor,
                 feat: torch.Tensor, n_steps: int = 2) -> list[Tape]:
    """The reference alone through every meanflow step: one tape per step.

    noise, mu, feat: [80, Tr] (the reference's initial noise, encoder output and mel); spk: [80].
    """
    x = noise[None]
    mask = torch.ones(1, 1, x.shape[-1], device=x.device, dtype=x.dtype)
    tapes = []
    for i in range(n_steps):
        t, r = _times(1, i, n_steps, x)
        tape = Tape()
        v = _Walk(tape, record=True).estimator(est, x, mask, mu[None], t, spk[None], feat[None], r)
        x = x + (1.0 / n_steps) * v
        tapes.append(tape)
    return tapes


def solve_meanflow_cached(est: torch.nn.Module, tapes: list[Tape], z: torch.Tensor, mask: torch.Tensor,
                          mu: torch.Tensor, spks: torch.Tensor) -> torch.Tensor:
    """Meanflow Euler steps over the generated frames only (the reference comes from ``tapes``).

    z, mu: [B, 80, T]; mask: [B, 1, T]; spks: [B, 80]. Generated frames have no mel condition (zeros).
    """
    b = z.shape[0]
    cond = torch.zeros_like(z)
    x = z
    n_steps = len(tapes)
    for i, tape in enumerate(tapes):
        t, r = _times(b, i, n_steps, z)
        x = x + (1.0 / n_steps) * _Walk(tape, record=False).estimator(est, x, mask, mu, t, spks, cond, r)
    return x
