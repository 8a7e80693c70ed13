"""T3 decoding for many utterances at once: static KV cache, batched steps, CUDA graphs.

The stock T3 decodes one utterance through Hugging Face's GPT-2 with a growing
cache, one Python-launched kernel sequence per token (~8.5 ms/token on an H100,
launch-bound). Here the same weights run in our own GPT-2 forward:

* one static KV cache ``[layers, slots, heads, max_len, head_dim]``; an utterance
  owns a slot from admission until it ends (continuous batching: new utterances
  join between steps, finished ones leave);
* the voice's conditioning prefix (speaker embedding + 375 prompt tokens) is
  causal, so its K/V depend only on the voice: computed once per voice and copied
  into the slot on admission; prefill then runs only the text tokens;
* one decode step advances every slot of a batch-size bucket (1, 2, 4 … max) and
  is captured as a CUDA graph per bucket, sampling included; on a GPU its
  attention is one Triton kernel (``decode_attention``) in which each slot reads
  its own positions only up to its own position, and the voice prefix from one
  buffer shared by all slots when they speak with one voice;
* a batched prefill (admission) is captured too, per (batch, text length)
  bucket and voice-prefix length: eager, it cost 11 ms for one text and 15 ms
  for 32 on an H100, almost all of it kernel launches, and arrivals wait in the
  scheduler's lobby for a multiple of that; padding rows write into a spare
  cache slot no utterance owns;
* sampling is the stock chain done batched on the GPU, in the stock order:
  temperature → top-k → top-p → repetition penalty → sample, each slot with its
  own settings (per voice, per request). Sampling uses the exponential-race form
  of multinomial (argmax of p / Exp(1)), which draws from the same distribution
  and needs no host sync; the Exp(1) noise is a hash of (the utterance's seed,
  position, token), so a fixed seed gives the same tokens batched or alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import decode_attention
from .checkpoint import START_SPEECH, STOP_SPEECH

# Prefills have a new (text length, cache length) shape almost every time. PyTorch's default
# for a masked attention on an H100 is cuDNN, which builds a plan per new shape on the CPU:
# 2 ms per layer, 49 ms of a batch-8 prefill whose GPU work is 4.7 ms (benchmarks/prefill_probe.py),
# and the GPU idle meanwhile. The memory-efficient kernel needs no plan.
_PREFILL_ATTENTION = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 1000
    top_p: float = 0.95
    repetition_penalty: float = 1.2

    @property
    def greedy(self) -> bool:
        return self.top_k == 1


@dataclass
class VoicePrefix:
    """K/V of a voice's conditioning prefix for every layer: ``[layers, 2, heads, P, head_dim]``."""

    kv: torch.Tensor
    length: int


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class _Layer:
    def __init__(self, block: torch.nn.Module, dtype: torch.dtype) -> None:
        def p(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(dtype).contiguous()

        self.ln1_w, self.ln1_b = p(block.ln_1.weight), p(block.ln_1.bias)
        self.qkv_w, self.qkv_b = p(block.attn.c_attn.weight), p(block.attn.c_attn.bias)  # [D, 3D]
        self.proj_w, self.proj_b = p(block.attn.c_proj.weight), p(block.attn.c_proj.bias)
        self.ln2_w, self.ln2_b = p(block.ln_2.weight), p(block.ln_2.bias)
        self.fc_w, self.fc_b = p(block.mlp.c_fc.weight), p(block.mlp.c_fc.bias)
        self.fc2_w, self.fc2_b = p(block.mlp.c_proj.weight), p(block.mlp.c_proj.bias)
        self.eps = block.ln_1.eps


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_MIX = [_signed(c) for c in (0x9E3779B97F4A7C15, 0xD1B54A32D192ED03, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)]


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def seeded_exponential(seeds: torch.Tensor, counters: torch.Tensor, vocab: int) -> torch.Tensor:
    """Exp(1) noise [rows, vocab], a pure function of (row's seed, row's counter, token): a
    counter-based generator (splitmix64's finaliser), so a row draws the same noise whatever
    batch it is in and inside a CUDA graph (torch's generator is one stream for the batch)."""
    idx = torch.arange(vocab, device=seeds.device, dtype=torch.long)
    z = seeds[:, None] * _MIX[0] + counters[:, None] * _MIX[1] + idx[None, :]
    z = (z ^ _shr(z, 30)) * _MIX[2]
    z = (z ^ _shr(z, 27)) * _MIX[3]
    z = z ^ _shr(z, 31)
    u = (_shr(z, 11).double() + 0.5) / float(1 << 53)  # (0, 1)
    return -torch.log(u).float()


def filter_rows(logits: torch.Tensor, seen: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                top_p: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """The stock chain's logits (temperature → top-k → top-p → repetition penalty; removed tokens
    at -inf), each row with its own settings ([rows] tensors).

    One ascending sort serves both filters, where stock sorts twice (top-k, then top-p on its
    result): the k-th largest value sits at ``v - k``; the values top-k removes are a prefix of
    the sorted row, so the sorted row with that prefix masked is the sorted top-k row top-p
    needs. Same logits as the two sorts (ties in index order: a stable sort); one sort of
    [rows, 6,561] per step instead of two (benchmarks/results/engine_notes.md, run 47)."""
    x = logits.float() / temperature[:, None]
    v = x.size(-1)
    sorted_x, order = torch.sort(x, dim=-1, descending=False, stable=True)
    kth = sorted_x.gather(1, (v - top_k.clamp(1, v))[:, None])
    sorted_x = sorted_x.masked_fill(sorted_x < kth, float("-inf"))
    cum = sorted_x.softmax(dim=-1).cumsum(dim=-1)
    remove = (cum <= (1.0 - top_p)[:, None]) & (top_p < 1.0)[:, None]
    remove[:, -1] = False
    x = x.scatter(1, order, sorted_x.masked_fill(remove, float("-inf")))
    rp = penalty[:, None]
    return torch.where(seen, torch.where(x < 0, x * rp, x / rp), x)


def sample_rows(logits: torch.Tensor, seen: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                top_p: torch.Tensor, penalty: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A token per row from ``filter_rows``' distribution, as argmax(p / noise) with ``noise`` ~ Exp(1)."""
    x = filter_rows(logits, seen, temperature, top_k, top_p, penalty)
    return torch.argmax(x.softmax(dim=-1) / noise, dim=-1)


def sample_tokens(logits: torch.Tensor, seen: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Batched stock sampling chain, one setting for all rows, torch's generator for the draw."""
    n = logits.size(0)

    def full(value: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.full((n,), value, device=logits.device, dtype=dtype)

    temperature = params.temperature if params.temperature > 0 else 1.0
    top_k = params.top_k if params.top_k > 0 else logits.size(-1)
    noise = torch.empty(logits.shape, device=logits.device).exponential_()
    return sample_rows(logits, seen, full(temperature), full(top_k, torch.long), full(params.top_p),
                       full(params.repetition_penalty), noise)


class T3Runner:
    """Owns the T3 weights on one device and decodes up to ``max_slots`` utterances together."""

    def __init__(self, t3: torch.nn.Module, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 max_slots: int = 64, max_len: int = 1024, sampling: SamplingParams = SamplingParams(),
                 cuda_graphs: bool = True) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.sampling = sampling
        self.max_slots = max_slots
        self.max_len = max_len
        tfmr = t3.tfmr
        cfg = t3.cfg
        self.n_layer = cfg.n_layer
        self.n_head = cfg.n_head
        self.width = cfg.n_embd
        self.head_dim = self.width // self.n_head
        with torch.no_grad():
            def p(x: torch.Tensor) -> torch.Tensor:
                return x.detach().to(self.device, dtype).contiguous()

            self.layers = [_Layer(b.to(self.device), dtype) for b in tfmr.h]
            self.wpe = p(tfmr.wpe.weight)
            self.lnf_w, self.lnf_b = p(tfmr.ln_f.weight), p(tfmr.ln_f.bias)
            self.lnf_eps = tfmr.ln_f.eps
            self.speech_emb = p(t3.speech_emb.weight)
            self.text_emb = p(t3.text_emb.weight)
            self.head_w = p(t3.speech_head.weight)
            self.head_b = p(t3.speech_head.bias) if t3.speech_head.bias is not None else None
        self._t3 = t3  # conditioning encoder (speaker projection) stays in the stock module
        # one more slot than utterances: scratch rows (padding rows of captured prefills, the voice prefix)
        shape = (self.n_layer, max_slots + 1, self.n_head, max_len, self.head_dim)
        self.scratch = max_slots
        self.k_cache = torch.zeros(shape, device=self.device, dtype=dtype)
        self.v_cache = torch.zeros(shape, device=self.device, dtype=dtype)
        # Per-slot decode state, static so CUDA graphs can read it.
        self.tokens = torch.zeros(max_slots, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(max_slots, dtype=torch.long, device=self.device)
        self.seen = torch.zeros(max_slots, self.speech_emb.size(0), dtype=torch.bool, device=self.device)
        # Per-slot sampling settings and seed (static: graphs read them); set on admission.
        self.temperature = torch.zeros(max_slots, device=self.device)
        self.top_k = torch.zeros(max_slots, dtype=torch.long, device=self.device)
        self.top_p = torch.zeros(max_slots, device=self.device)
        self.penalty = torch.zeros(max_slots, device=self.device)
        self.seeds = torch.zeros(max_slots, dtype=torch.long, device=self.device)
        self._set_sampling(torch.arange(max_slots, device=self.device), [sampling] * max_slots, [0] * max_slots)
        self._key_index = torch.arange(max_len, device=self.device)
        # The voice prefix the decode kernel reads for every slot: a static buffer (graphs read
        # it), refilled when the live slots' voice changes; which voice each slot speaks with.
        self._shared_kv = torch.zeros((self.n_layer, 2, self.n_head, max_len, self.head_dim),
                                      device=self.device, dtype=dtype) if decode_attention.available(self.device) \
            else None
        self._shared_voice: VoicePrefix | None = None
        self.slot_voice: list[VoicePrefix | None] = [None] * max_slots
        self._true = torch.ones(max_slots, dtype=torch.bool, device=self.device)
        self._graphs: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # Attention reads only the first L cache positions, L a multiple of ``key_step`` covering
        # every live slot: the cache is read whole otherwise (at 128 slots and 1,024 positions
        # that is 12 GB a step, the step's main cost). Host copy of live slots' positions:
        self.key_step = 128
        self.host_pos = [0] * max_slots
        self.last_logits: torch.Tensor | None = None
        self._capturing = False
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self.buckets = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= max_slots]
        if self.buckets[-1] != max_slots:
            self.buckets.append(max_slots)
        # Captured prefills: up to 32 texts of up to 128 positions (longer ones run eagerly).
        self.max_prefill_batch = 32
        self.late_captures = 0  # decode and prefill graphs captured in service, not at start-up
        self.prefill_buckets = (16, 32, 48, 64, 96, 128)
        self._prefill_graphs: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor],
                                                               torch.Tensor]] = {}

    # -- the transformer ------------------------------------------------------------
    def _layer_norm(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
        return F.layer_norm(x, (self.width,), w, b, eps)

    def _forward_span(self, slot: int, start: int, x: torch.Tensor) -> torch.Tensor:
        """Run ``x`` ([T, D], positions start..start+T-1) through all layers for one slot, filling its cache."""
        t = x.size(0)
        end = start + t
        x = x + self.wpe[start:end]
        causal = torch.ones(t, end, dtype=torch.bool, device=self.device).tril(diagonal=start)
        for i, layer in enumerate(self.layers):
            h = self._layer_norm(x, layer.ln1_w, layer.ln1_b, layer.eps)
            qkv = torch.addmm(layer.qkv_b, h, layer.qkv_w).view(t, 3, self.n_head, self.head_dim)
            q, k, v = qkv.unbind(1)
            self.k_cache[i, slot, :, start:end] = k.transpose(0, 1)
            self.v_cache[i, slot, :, start:end] = v.transpose(0, 1)
            keys = self.k_cache[i, slot, :, :end]
            values = self.v_cache[i, slot, :, :end]
            with sdpa_kernel(_PREFILL_ATTENTION):
                a = F.scaled_dot_product_attention(q.transpose(0, 1), keys, values, attn_mask=causal)
            a = a.transpose(0, 1).reshape(t, self.width)
            x = x + torch.addmm(layer.proj_b, a, layer.proj_w)
            h = self._layer_norm(x, layer.ln2_w, layer.ln2_b, layer.eps)
            x = x + torch.addmm(layer.fc2_b, _gelu_new(torch.addmm(layer.fc_b, h, layer.fc_w)), layer.fc2_w)
        return self._layer_norm(x, self.lnf_w, self.lnf_b, self.lnf_eps)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = hidden @ self.head_w.t()
        return out + self.head_b if self.head_b is not None else out

    def _decode(self, n: int, keys: int, shared: int = 0) -> torch.Tensor:
        """One step for slots [0, n) over cache positions [0, keys): returns logits [n, V].

        ``shared`` > 0: every slot's positions [0, shared) are the voice prefix in
        ``_shared_kv`` (the decode kernel reads it there). Idle slots in the bucket are
        clamped to the last position read (they write there, in their own rows, harmlessly);
        live slots are below it by construction (``_keys_for``)."""
        pos = self.positions[:n].clamp(max=keys - 1)
        x = self.speech_emb[self.tokens[:n]] + self.wpe[pos]
        rows = torch.arange(n, device=self.device)
        # the SDPA path's key mask, once per step for every layer (the kernel needs none)
        mask = None if decode_attention.available(self.device, n) else \
            decode_attention.sdpa_mask(pos, self._key_index[:keys])
        for i, layer in enumerate(self.layers):
            h = self._layer_norm(x, layer.ln1_w, layer.ln1_b, layer.eps)
            qkv = torch.addmm(layer.qkv_b, h, layer.qkv_w).view(n, 3, self.n_head, self.head_dim)
            q, k, v = qkv.unbind(1)
            self.k_cache[i, rows, :, pos] = k
            self.v_cache[i, rows, :, pos] = v
            # the shared prefix's K and V (without the kernel: any two rows, never read)
            prefix = self._shared_kv[i] if self._shared_kv is not None else self.k_cache[i, :2]
            a = decode_attention.attend(q, self.k_cache[i], self.v_cache[i], prefix[0], prefix[1], pos, shared, keys,
                                        mask)
            a = a.reshape(n, self.width)
            x = x + torch.addmm(layer.proj_b, a, layer.proj_w)
            h = self._layer_norm(x, layer.ln2_w, layer.ln2_b, layer.eps)
            x = x + torch.addmm(layer.fc2_b, _gelu_new(torch.addmm(layer.fc_b, h, layer.fc_w)), layer.fc2_w)
        return self._logits(self._layer_norm(x, self.lnf_w, self.lnf_b, self.lnf_eps))

    def _step_eager(self, n: int, keys: int | None = None, shared: int = 0) -> torch.Tensor:
        logits = self._decode(n, keys or self.max_len, shared)
        if not self._capturing:
            self.last_logits = logits  # for tests and diagnostics (not kept inside graphs)
        new = self._sample(slice(0, n), logits, self.positions[:n])
        rows = torch.arange(n, device=self.device)
        self.seen.index_put_((rows, new), self._true[:n])  # a device tensor: no host copy inside a graph
        self.tokens[:n] = new
        # Idle slots inside the batch bucket step too: their position stops at the cache's
        # last one (else, over hours, it runs past the cache and the write faults). Real
        # utterances never get there: the scheduler caps their tokens to the room left.
        self.positions[:n] = torch.clamp(self.positions[:n] + 1, max=self.max_len - 1)
        return new

    # -- public API -----------------------------------------------------------------
    @torch.inference_mode()
    def voice_prefix(self, t3_cond: object) -> VoicePrefix:
        """K/V of the conditioning prefix, computed once per voice (in the scratch slot's rows)."""
        cond = self._t3.prepare_conditioning(t3_cond)[0].to(self.device, self.dtype)  # [P, D]
        p = cond.size(0)
        self._forward_span(self.scratch, 0, cond)
        kv = torch.stack([self.k_cache[:, self.scratch, :, :p], self.v_cache[:, self.scratch, :, :p]], dim=1).clone()
        return VoicePrefix(kv, p)

    @torch.inference_mode()
    def admit(self, slot: int, prefix: VoicePrefix, text_ids: torch.Tensor) -> tuple[int, torch.Tensor]:
        """Start an utterance in ``slot``: voice K/V copied, text + start token prefilled.

        Returns the position after the prefill and the prefill logits.
        """
        lengths, logits = self.admit_many([slot], prefix, [text_ids])
        return lengths[0], logits[0]

    def _set_sampling(self, idx: torch.Tensor, params: list[SamplingParams], seeds: list[int]) -> None:
        vocab = self.speech_emb.size(0)

        def col(values: list, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype).to(self.device)

        self.temperature[idx] = col([p.temperature if p.temperature > 0 else 1.0 for p in params])
        self.top_k[idx] = col([p.top_k if p.top_k > 0 else vocab for p in params], torch.long)
        self.top_p[idx] = col([p.top_p for p in params])
        self.penalty[idx] = col([p.repetition_penalty for p in params])
        self.seeds[idx] = col([int(s) & ((1 << 62) - 1) for s in seeds], torch.long)

    def _sample(self, rows: "slice | torch.Tensor", logits: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
        """Each row's token by its slot's settings, its noise from (slot's seed, ``counters``: the
        position being sampled), so a seeded utterance draws the same tokens batched or alone."""
        noise = seeded_exponential(self.seeds[rows], counters, logits.size(-1))
        return sample_rows(logits, self.seen[rows], self.temperature[rows], self.top_k[rows], self.top_p[rows],
                           self.penalty[rows], noise)

    @torch.inference_mode()
    def admit_many(self, slots: list[int], prefix: VoicePrefix, texts: list[torch.Tensor],
                   sampling: list[SamplingParams] | None = None,
                   seeds: list[int] | None = None) -> tuple[list[int], torch.Tensor]:
        """Start several utterances of one voice in one batched prefill (right-padded texts).

        Padding sits after each row's last real token, so the causal mask keeps it out of
        the real rows; the K/V it writes lies beyond the row's position and is overwritten
        by the row's next decode steps before any query can see it. The first tokens are
        sampled into ``self.tokens`` (device); returns each row's position and the logits.
        """
        p = prefix.length
        b = len(slots)
        idx = torch.tensor(slots, device=self.device)
        lens = [t.numel() + 1 for t in texts]  # the text, then the start token
        t = max(lens)
        if p + t + 1 >= self.max_len:
            raise ValueError(f"text too long: {t} tokens with a {p}-token voice prefix "
                             f"exceeds the {self.max_len}-position cache")
        ids = torch.zeros(b, t, dtype=torch.long)
        for i, text in enumerate(texts):
            ids[i, :lens[i] - 1] = text.view(-1)
        self.k_cache[:, idx, :, :p] = prefix.kv[:, 0].unsqueeze(1).expand(-1, b, -1, -1, -1)
        self.v_cache[:, idx, :, :p] = prefix.kv[:, 1].unsqueeze(1).expand(-1, b, -1, -1, -1)
        key = self._prefill_bucket(b, t, p)
        if key is None:
            logits = self._prefill_logits(idx, p, ids.to(self.device), torch.tensor(lens, device=self.device))
        else:
            if key not in self._prefill_graphs:
                self.late_captures += 1  # a prefill shape first met in service
            graph, ins, out = self._prefill_graphs.get(key) or self._capture_prefill(*key)
            ins["idx"].fill_(self.scratch)
            ins["idx"][:b] = idx
            ins["ids"].zero_()
            ins["ids"][:b, :t] = ids.to(self.device)
            ins["lens"].fill_(1)
            ins["lens"][:b] = torch.tensor(lens).to(self.device)
            graph.replay()
            logits = out[:b]
        self.seen[idx] = False
        self.seen[idx, START_SPEECH] = True  # stock: the first pick is penalised against the start token
        if seeds is None:  # unseeded: a fresh draw per utterance
            seeds = torch.randint(0, 1 << 62, (b,)).tolist()
        self._set_sampling(idx, sampling or [self.sampling] * b, seeds)
        first = self._sample(idx, logits, torch.tensor([p + n - 1 for n in lens], device=self.device))
        self.seen[idx] = False
        self.seen[idx, first] = True
        self.tokens[idx] = first
        self.positions[idx] = torch.tensor([p + n for n in lens], device=self.device)
        for slot, n in zip(slots, lens):
            self.host_pos[slot] = p + n
            self.slot_voice[slot] = prefix
        return [p + n for n in lens], logits

    def _prefill_logits(self, idx: torch.Tensor, p: int, ids: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """Right-padded text ids [B, T] (the start token goes at each row's ``lens - 1``) after the
        voice prefix: prefill the slots ``idx`` and return the logits at each row's last token."""
        b, t = ids.shape
        rows = torch.arange(b, device=self.device)
        valid = torch.arange(t, device=self.device)[None, :] < lens[:, None]
        x = self.text_emb[ids] * valid[..., None].to(self.dtype)
        x[rows, lens - 1] = self.speech_emb[START_SPEECH]
        return self._logits(self._prefill(idx, p, x)[rows, lens - 1])

    def _prefill_bucket(self, b: int, t: int, p: int) -> tuple[int, int, int] | None:
        """The captured prefill for b texts of <= t positions after a p-position prefix (None: eager)."""
        if not self.use_graphs or t > self.prefill_buckets[-1]:
            return None
        bb = next((x for x in self.buckets if x >= b), None)
        tt = next(x for x in self.prefill_buckets if x >= t)
        if bb is None or bb > self.max_prefill_batch or p + tt >= self.max_len:
            return None
        return bb, tt, p

    def _capture_prefill(self, b: int, t: int, p: int) -> tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]:
        ins = dict(idx=torch.full((b,), self.scratch, dtype=torch.long, device=self.device),
                   ids=torch.zeros(b, t, dtype=torch.long, device=self.device),
                   lens=torch.ones(b, dtype=torch.long, device=self.device))
        s = torch.cuda.Stream()  # warm-up outside the capture (every row writes the scratch slot)
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            self._prefill_logits(ins["idx"], p, ins["ids"], ins["lens"])
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._prefill_logits(ins["idx"], p, ins["ids"], ins["lens"])
        self._prefill_graphs[(b, t, p)] = (graph, ins, out)
        return graph, ins, out

    def _prefill(self, idx: torch.Tensor, start: int, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, T, D] at positions start.. for the slots ``idx``, through all layers, filling their caches."""
        b, t, _ = x.shape
        end = start + t
        x = x + self.wpe[start:end]
        causal = torch.ones(t, end, dtype=torch.bool, device=self.device).tril(diagonal=start)
        for i, layer in enumerate(self.layers):
            h = self._layer_norm(x, layer.ln1_w, layer.ln1_b, layer.eps)
            qkv = (h @ layer.qkv_w + layer.qkv_b).view(b, t, 3, self.n_head, self.head_dim)
            q, k, v = qkv.unbind(2)  # [B, T, H, d]
            self.k_cache[i, idx, :, start:end] = k.transpose(1, 2)
            self.v_cache[i, idx, :, start:end] = v.transpose(1, 2)
            keys = self.k_cache[i, idx, :, :end]
            values = self.v_cache[i, idx, :, :end]
            with sdpa_kernel(_PREFILL_ATTENTION):
                a = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=causal)
            a = a.transpose(1, 2).reshape(b, t, self.width)
            x = x + (a @ layer.proj_w + layer.proj_b)
            h = self._layer_norm(x, layer.ln2_w, layer.ln2_b, layer.eps)
            x = x + (_gelu_new(h @ layer.fc_w + layer.fc_b) @ layer.fc2_w + layer.fc2_b)
        return self._layer_norm(x, self.lnf_w, self.lnf_b, self.lnf_eps)

    def bucket_for(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        raise ValueError(f"{n} slots exceed max_slots={self.max_slots}")

    def _keys_for(self, n: int) -> int:
        """Cache positions a step of live slots [0, n) must read: their next position included."""
        need = max(self.host_pos[:n], default=0) + 1
        return min(self.max_len, -(-need // self.key_step) * self.key_step)

    def _shared_for(self, n: int, keys: int) -> int:
        """The prefix length slots [0, n) share (their one voice's), or 0 when they do not."""
        voice = self.slot_voice[0]
        if self._shared_kv is None or voice is None or voice.length >= keys or \
                any(v is not voice for v in self.slot_voice[1:n]):
            return 0
        if self._shared_voice is not voice:
            self._shared_kv[:, :, :, :voice.length] = voice.kv
            self._shared_voice = voice
        return voice.length

    @torch.inference_mode()
    def step(self, n: int) -> torch.Tensor:
        """Advance slots [0, bucket(n)) by one token; returns the new tokens of slots [0, n)."""
        b = self.bucket_for(n)
        keys = self._keys_for(n)
        shared = self._shared_for(n, keys) if decode_attention.available(self.device, b) else 0
        for i in range(n):
            self.host_pos[i] = min(self.host_pos[i] + 1, self.max_len - 1)
        if not self.use_graphs:
            return self._step_eager(b, keys, shared)[:n]
        if (b, keys, shared) not in self._graphs:
            self.late_captures += 1  # a decode bucket first met in service
        graph = self._graphs.get((b, keys, shared)) or self._capture(b, keys, shared)
        graph[0].replay()
        return graph[1][:n]

    def _capture(self, b: int, keys: int, shared: int = 0) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Warm up on a side stream (allocations, cuBLAS handles), then capture.
        saved = (self.tokens.clone(), self.positions.clone(), self.seen.clone())
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                self._step_eager(b, keys, shared)
        torch.cuda.current_stream().wait_stream(s)
        self.tokens.copy_(saved[0]); self.positions.copy_(saved[1]); self.seen.copy_(saved[2])
        graph = torch.cuda.CUDAGraph()
        self._capturing = True
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                out = self._step_eager(b, keys, shared)
        finally:
            self._capturing = False
        self.tokens.copy_(saved[0]); self.positions.copy_(saved[1]); self.seen.copy_(saved[2])
        self._graphs[(b, keys, shared)] = (graph, out)
        return graph, out

    @torch.inference_mode()
    def capture_all(self, prefix: VoicePrefix | None = None) -> None:
        """Decode graphs of every (bucket, cache length); with ``prefix``, that voice's prefill graphs."""
        if self.use_graphs:
            steps = -(-self.max_len // self.key_step)
            lengths = sorted({min(self.max_len, k * self.key_step) for k in range(1, steps + 1)}, reverse=True)
            for b in reversed(self.buckets):  # largest first: the graphs share one memory pool
                shares = [0] + ([prefix.length] if prefix is not None and self._shared_kv is not None
                                and decode_attention.available(self.device, b) else [])
                for keys in lengths:
                    for shared in shares:
                        if shared < keys and (b, keys, shared) not in self._graphs:
                            self._capture(b, keys, shared)
            if prefix is not None:  # the voice's prefill graphs
                for b in reversed([x for x in self.buckets if x <= self.max_prefill_batch]):
                    for t in reversed(self.prefill_buckets):
                        if (b, t, prefix.length) not in self._prefill_graphs and prefix.length + t < self.max_len:
                            self._capture_prefill(b, t, prefix.length)

    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Compact: move an utterance's cache and state from ``src`` to ``dst``."""
        self.k_cache[:, dst, :, :length] = self.k_cache[:, src, :, :length]
        self.v_cache[:, dst, :, :length] = self.v_cache[:, src, :, :length]
        self.tokens[dst] = self.tokens[src]
        self.positions[dst] = self.positions[src]
        self.host_pos[dst] = self.host_pos[src]
        self.slot_voice[dst] = self.slot_voice[src]
        self.seen[dst] = self.seen[src]
        for t in (self.temperature, self.top_k, self.top_p, self.penalty, self.seeds):
            t[dst] = t[src]


STOP_TOKEN = STOP_SPEECH
