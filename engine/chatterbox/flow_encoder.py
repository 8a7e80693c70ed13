"""The flow's conformer encoder (tokens → the decoder's condition ``mu``), for streaming windows.

Stock ``UpsampleConformerEncoder.forward`` builds its attention masks through
``add_optional_chunk_mask``, which checks them with ``.item()``: a device sync
per call, so the encoder could not be captured and ran eagerly (~100 small
kernels launched from Python per window batch). With full attention (no
dynamic or static chunks, the Turbo configuration) that function returns the
padding mask unchanged, so ``encoder_forward`` passes it straight on and calls
the stock submodules in the stock order, with one change for batches: padding
is zeroed before the lookahead convolution (see ``encoder_forward``), so each
row equals that utterance encoded alone. It encodes a voice's reference alone,
once (its ``mu`` is the estimator's reference condition).

A window (``encode_window``). Stock encodes the reference's ~250 tokens again in
front of every window, and they were most of the encoder's work (1.8-2.0 s of
S3Gen's 7 s at saturation on an H100). Here the reference is block-causal, as in
the estimator's reference cache (flow_cache): its tokens attend only to
themselves, so its keys and values in each of the 6 + 4 layers depend only on
the voice and are computed once (``EncoderReference``); a window runs only its
own tokens, whose rows attend to [the reference's keys | their own]. Everything
else a window row sees is exactly what it sees in the joint pass:

* relative positions: a window query i (absolute R + i) and key j use the
  espnet encoding of i - j; the window's scores against every key are one
  product with the R + 2W - 1 encodings that occur, read through a strided view
  (column W - 1 - i + j) instead of stock's pad-and-reshape ``rel_shift``;
* the lookahead convolution: the window's first two positions read conv1
  outputs of the reference's last two tokens, which look 3 tokens ahead into the
  window; they are recomputed from the reference's last two embedded tokens;
* the upsampling convolution (causal, 5 taps after a x2 nearest upsample) reads
  the reference's last two tokens after the first 6 layers (kept per voice);
* the reference is left-padded to ``REF_TOKENS`` with masked keys (relative
  positions, i - j, do not change), so one set of graphs serves every voice.

The test (tests/test_chatterbox.py) compares it with the stock layers fed the
reference's keys and values as their ``att_cache`` and the joint sequence's
positional encoding. ``WindowEncoderGraphs`` captures it per (batch, tokens)
bucket; padding rows and tokens are masked exactly (zero embeddings, key masks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .bucket_graphs import BucketGraphs

REF_TOKENS = 256  # the reference's tokens, left-padded to this many (10 s at 25 tokens/s fit)


def check_encoder_supported(enc: torch.nn.Module) -> None:
    if getattr(enc, "global_cmvn", None) is not None or getattr(enc, "use_dynamic_chunk", False) \
            or getattr(enc, "static_chunk_size", 0) != 0 or not enc.normalize_before or any(
                layer.feed_forward_macaron is not None or layer.conv_module is not None
                for layer in list(enc.encoders) + list(enc.up_encoders)):
        raise NotImplementedError("flow encoder: only full attention without CMVN, macaron or convolution "
                                  "modules is supported (the Turbo layout)")


def encoder_forward(enc: torch.nn.Module, xs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Stock ``UpsampleConformerEncoder.forward`` for full attention; ``masks`` [B, 1, T] bool."""
    xs, pos_emb, masks = enc.embed(xs, masks)
    # The lookahead convolution reads 3 tokens past each row's end: zeros, as for one
    # unpadded utterance (stock leaves the embedding of padding there, non-zero after
    # the embed's LayerNorm, so a padded batch changed short rows' last tokens).
    xs = xs * masks.transpose(1, 2).to(xs.dtype)
    xs = enc.pre_lookahead_layer(xs)
    xs = enc.forward_layers(xs, masks, pos_emb, masks)
    lens = torch.zeros(xs.shape[0], dtype=torch.long, device=xs.device)  # unused by Upsample1D's output
    xs = enc.up_layer(xs.transpose(1, 2).contiguous(), lens)[0].transpose(1, 2).contiguous()
    masks = masks.repeat_interleave(enc.up_layer.stride, dim=-1)  # stock: the pad mask of lengths * stride
    xs, pos_emb, masks = enc.up_embed(xs, masks)
    xs = enc.forward_up_layers(xs, masks, pos_emb, masks)
    if enc.normalize_before:
        xs = enc.after_norm(xs)
    return xs


def encode_tokens(flow: torch.nn.Module, tokens: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Right-padded token ids [B, L] and lengths [B] → ``mu`` [B, 80, 2L] (padding frames garbage)."""
    valid = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lens[:, None]
    x = flow.input_embedding(tokens) * valid[..., None].to(flow.encoder_proj.weight.dtype)
    h = encoder_forward(flow.encoder, x, valid[:, None, :])
    return flow.encoder_proj(h).transpose(1, 2)


@dataclass
class EncoderReference:
    """What a window needs of its voice's reference, left-padded to ``tokens`` positions."""

    keys: list[torch.Tensor]  # per layer (6, then 4 after upsampling): [H, R', d], R' = tokens or 2 * tokens
    values: list[torch.Tensor]
    bias: torch.Tensor  # [tokens] 0 for the reference's keys, -inf for padding
    e_tail: torch.Tensor  # [2, D] its last two embedded tokens (the lookahead convolution's left context)
    h_tail: torch.Tensor  # [2, D] its last two tokens after the first 6 layers (the upsampler's)
    tokens: int

    def copy_(self, other: "EncoderReference") -> None:
        for a, b in zip(self.keys + self.values + [self.bias, self.e_tail, self.h_tail],
                        other.keys + other.values + [other.bias, other.e_tail, other.h_tail]):
            a.copy_(b)


def _kv(att: torch.nn.Module, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An attention's keys and values for its normed input ``xn`` [B, T, D]: [B, H, T, d] each."""
    b, t, _ = xn.shape
    return (att.linear_k(xn).view(b, t, att.h, att.d_k).transpose(1, 2),
            att.linear_v(xn).view(b, t, att.h, att.d_k).transpose(1, 2))


def _ref_kv(layer: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's keys and values for the reference alone, ``x`` [1, T, D]: [H, T, d] each."""
    k, v = _kv(layer.self_attn, layer.norm_mha(x))
    return k[0], v[0]


@torch.inference_mode()
def encode_reference(flow: torch.nn.Module, tokens: torch.Tensor, pad_to: int = REF_TOKENS) -> EncoderReference:
    """The reference alone through the encoder (stock layers), keeping each layer's keys and values."""
    enc = flow.encoder
    r = tokens.numel()
    if r > pad_to:
        raise ValueError(f"voice reference of {r} tokens exceeds the encoder's {pad_to}")
    masks = torch.ones(1, 1, r, dtype=torch.bool, device=tokens.device)
    xs, pos, _ = enc.embed(flow.input_embedding(tokens.view(1, -1)), masks)
    e_tail = xs[0, -2:]
    xs = enc.pre_lookahead_layer(xs)
    kvs = []
    for layer in enc.encoders:
        kvs.append(_ref_kv(layer, xs))
        xs = layer(xs, masks, pos, masks)[0]
    h_tail = xs[0, -2:]
    lens = torch.zeros(1, dtype=torch.long, device=xs.device)
    xs = enc.up_layer(xs.transpose(1, 2).contiguous(), lens)[0].transpose(1, 2).contiguous()
    masks = masks.repeat_interleave(enc.up_layer.stride, dim=-1)
    xs, pos, _ = enc.up_embed(xs, masks)
    for layer in enc.up_encoders:
        kvs.append(_ref_kv(layer, xs))
        xs = layer(xs, masks, pos, masks)[0]

    def left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
        return F.pad(t, (0, 0, n - t.size(1), 0))

    n_low = len(enc.encoders)
    sizes = [pad_to] * n_low + [pad_to * enc.up_layer.stride] * len(enc.up_encoders)
    bias = torch.full((pad_to,), float("-inf"), device=tokens.device, dtype=xs.dtype)
    bias[pad_to - r:] = 0
    return EncoderReference([left_pad(k, n) for (k, _), n in zip(kvs, sizes)],
                            [left_pad(v, n) for (_, v), n in zip(kvs, sizes)], bias, e_tail, h_tail, pad_to)


def _positions(pos_enc: torch.nn.Module, x: torch.Tensor, ref: int, w: int) -> torch.Tensor:
    """The espnet encodings of relative positions R + W - 1 … -(W - 1): [1, R + 2W - 1, D]."""
    pos_enc.extend_pe(x)  # (device and dtype)
    c = pos_enc.pe.size(1) // 2  # index of relative position 0; index c - r is position r
    return pos_enc.pe[:, c - ref - w + 1:c + w]


def _window_layer(layer: torch.nn.Module, x: torch.Tensor, ref_k: torch.Tensor, ref_v: torch.Tensor,
                  bias: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """One conformer layer (norm, relative-position attention, FFN) for window rows ``x`` [B, W, D]."""
    att = layer.self_attn
    b, w, _ = x.shape
    h, d = att.h, att.d_k
    xn = layer.norm_mha(x)
    q = att.linear_q(xn).view(b, w, h, d)
    k, v = _kv(att, xn)
    keys = torch.cat([ref_k.expand(b, -1, -1, -1), k], dim=2)
    values = torch.cat([ref_v.expand(b, -1, -1, -1), v], dim=2)
    p = att.linear_pos(pos).view(1, -1, h, d).transpose(1, 2)  # [1, H, L, d], L = R + 2W - 1
    ac = torch.matmul((q + att.pos_bias_u).transpose(1, 2), keys.transpose(-2, -1))  # [B, H, W, T]
    bd = torch.matmul((q + att.pos_bias_v).transpose(1, 2), p.transpose(-2, -1)).contiguous()  # [B, H, W, L]
    t, n = keys.size(2), bd.size(-1)
    bd = bd.as_strided((b, h, w, t), (h * w * n, w * n, n - 1, 1), bd.storage_offset() + w - 1)
    scores = (ac + bd) / math.sqrt(d) + bias
    out = torch.matmul(scores.softmax(dim=-1), values).transpose(1, 2).reshape(b, w, h * d)
    x = x + att.linear_out(out)
    return x + layer.ff_scale * layer.feed_forward(layer.norm_ff(x))


def encode_window(flow: torch.nn.Module, ref: EncoderReference, tokens: torch.Tensor,
                  lens: torch.Tensor) -> torch.Tensor:
    """Right-padded window tokens [B, W] and lengths [B] → ``mu`` [B, 80, 2W] (padding frames garbage)."""
    enc = flow.encoder
    b, w = tokens.shape
    valid = torch.arange(w, device=tokens.device)[None, :] < lens[:, None]
    dtype = flow.encoder_proj.weight.dtype
    vmask = valid[..., None].to(dtype)
    e = enc.embed.out(flow.input_embedding(tokens) * vmask) * enc.embed.pos_enc.xscale * vmask
    pl = enc.pre_lookahead_layer
    z = torch.cat([ref.e_tail.expand(b, -1, -1), e], dim=1).transpose(1, 2)  # positions -2 … W-1
    z = F.leaky_relu(pl.conv1(F.pad(z, (0, pl.pre_lookahead_len))))
    xs = pl.conv2(z).transpose(1, 2) + e
    key_bias = torch.zeros(b, w, device=tokens.device, dtype=dtype).masked_fill(~valid, float("-inf"))
    bias = torch.cat([ref.bias.expand(b, -1), key_bias], dim=1)[:, None, None, :]
    pos = _positions(enc.embed.pos_enc, xs, ref.tokens, w)
    n_low = len(enc.encoders)
    for i, layer in enumerate(enc.encoders):
        xs = _window_layer(layer, xs, ref.keys[i], ref.values[i], bias, pos)
    stride = enc.up_layer.stride
    u = torch.cat([ref.h_tail.expand(b, -1, -1), xs], dim=1).transpose(1, 2)
    u = enc.up_layer.conv(F.interpolate(u, scale_factor=float(stride), mode="nearest")).transpose(1, 2)
    u = enc.up_embed.out(u) * enc.up_embed.pos_enc.xscale
    bias = torch.cat([ref.bias.repeat_interleave(stride).expand(b, -1), key_bias.repeat_interleave(stride, dim=1)],
                     dim=1)[:, None, None, :]
    pos = _positions(enc.up_embed.pos_enc, u, ref.tokens * stride, w * stride)
    for i, layer in enumerate(enc.up_encoders):
        u = _window_layer(layer, u, ref.keys[n_low + i], ref.values[n_low + i], bias, pos)
    return flow.encoder_proj(enc.after_norm(u)).transpose(1, 2)


class WindowEncoderGraphs(BucketGraphs):
    """``encode_window`` captured per (batch, tokens) bucket; the voice's reference in static buffers."""

    def __init__(self, flow: torch.nn.Module, device: torch.device, batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
                 token_step: int = 16) -> None:
        check_encoder_supported(flow.encoder)
        super().__init__(device, batches, token_step, "encoder")
        self.flow = flow
        self.ref: EncoderReference | None = None  # static: every graph reads it
        self.loaded: object = None

    def load_voice(self, ref: EncoderReference) -> None:
        if self.loaded is ref:
            return
        if self.ref is None:
            self.ref = EncoderReference([k.clone() for k in ref.keys], [v.clone() for v in ref.values],
                                        ref.bias.clone(), ref.e_tail.clone(), ref.h_tail.clone(), ref.tokens)
        else:
            self.ref.copy_(ref)
        self.loaded = ref

    def _inputs(self, b: int, length: int) -> dict[str, torch.Tensor]:
        return dict(tokens=torch.zeros(b, length, dtype=torch.long, device=self.device),
                    lens=torch.ones(b, dtype=torch.long, device=self.device))

    def _run(self, **ins: torch.Tensor) -> torch.Tensor:
        if self.ref is None:
            raise RuntimeError("WindowEncoderGraphs: load a voice before capturing")
        return encode_window(self.flow, self.ref, **ins)

    def __call__(self, ref: EncoderReference, tokens: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        self.load_voice(ref)
        b, length = tokens.shape
        _, graph, ins, out = self.entry(b, length)
        ins["tokens"].zero_()
        ins["tokens"][:b, :length] = tokens
        ins["lens"].fill_(1)
        ins["lens"][:b] = lens
        graph.replay()
        return out[:b]
