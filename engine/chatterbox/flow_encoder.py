"""The flow's conformer encoder (tokens → the decoder's condition ``mu``) without host syncs.

Stock ``UpsampleConformerEncoder.forward`` builds its attention masks through
``add_optional_chunk_mask``, which checks them with ``.item()``: a device sync
per call, so the encoder could not be captured and ran eagerly (~100 small
kernels launched from Python per window batch). With full attention (no
dynamic or static chunks, the Turbo configuration) that function returns the
padding mask unchanged, so ``encoder_forward`` passes it straight on and calls
the stock submodules in the stock order, with one change for batches: padding
is zeroed before the lookahead convolution (see ``encoder_forward``), so each
row equals that utterance encoded alone. ``EncoderGraphs`` captures the whole
token → ``mu`` path per (batch, tokens) bucket; padding rows and tokens are
masked exactly as in stock (zero embeddings, key masks).
"""

from __future__ import annotations

import torch

from .bucket_graphs import BucketGraphs


def check_encoder_supported(enc: torch.nn.Module) -> None:
    if getattr(enc, "global_cmvn", None) is not None or getattr(enc, "use_dynamic_chunk", False) \
            or getattr(enc, "static_chunk_size", 0) != 0:
        raise NotImplementedError("flow encoder: only full attention without CMVN is supported (the Turbo layout)")


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


class EncoderGraphs(BucketGraphs):
    """``encode_tokens`` captured per (batch, tokens) bucket."""

    def __init__(self, flow: torch.nn.Module, device: torch.device, batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
                 token_step: int = 32) -> None:
        check_encoder_supported(flow.encoder)
        super().__init__(device, batches, token_step, "encoder")
        self.flow = flow

    def _inputs(self, b: int, length: int) -> dict[str, torch.Tensor]:
        return dict(tokens=torch.zeros(b, length, dtype=torch.long, device=self.device),
                    lens=torch.ones(b, dtype=torch.long, device=self.device))

    def _run(self, **ins: torch.Tensor) -> torch.Tensor:
        return encode_tokens(self.flow, **ins)

    def __call__(self, tokens: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        b, length = tokens.shape
        _, graph, ins, out = self.entry(b, length)
        ins["tokens"].zero_()
        ins["tokens"][:b, :length] = tokens
        ins["lens"].fill_(1)
        ins["lens"][:b] = lens
        graph.replay()
        return out[:b]
