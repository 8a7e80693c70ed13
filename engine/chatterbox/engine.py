"""The Chatterbox Turbo engine behind the common streaming interface.

``stream(text, voice)`` submits the text's utterances (one, or several back to
back when it is long: ``text.py``) to the GPU worker and yields their 24 kHz
float32 chunks as they are produced, watermarked (``engine/watermark.py``).
Closing the iterator (the caller hung up, barge-in) cancels the request; the
worker frees its slot before its next step.

At load, each configured fast path (bfloat16 T3/flow, float16 HiFT, the
block-causal reference, CUDA graphs) is checked against its exact path on the
default voice (``verify.startup_checks``); one below its threshold is replaced
by the exact path, with a warning and a metric (``checks``, ``fallbacks``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import numpy as np

from ..base import EngineBase, EngineError, EngineStats, VoiceSpec
from ..shared_cache import SharedCache, SharedCacheConfig

log = logging.getLogger(__name__)
SAMPLE_RATE = 24000
# The stock pipeline fades every utterance in over 40 ms whose first half is zeros (``trim_fade``, kept
# by the streamer for equivalence). Sent as such, a call's first packet and an API stream's first
# 20 ms are digital silence: the first audible audio comes one frame after the first audio. A stream
# starts at its fade's ramp instead; utterances after the first keep theirs (a pause between them).
LEAD_ZEROS = SAMPLE_RATE // 50
# A lower-precision vocoder is kept only if its audio on the default voice's reference mel is
# this close to float32's. H100, random weights: float16 48.9 dB (1.35x faster), bfloat16 31 dB.
# For scale, G.711's own quantisation noise is about 38 dB below a full-scale signal.
MIN_VOCODER_SNR_DB = 40.0  # = verify.THRESHOLDS["vocoder.dtype.audio_snr_db"]
# Speech tokens per text token, for splitting long text: English at ~2.5 words/s is ~3.3 GPT-2
# tokens/s against 25 speech tokens/s (7.5), rounded up so a piece's speech fits.
SPEECH_PER_TEXT_TOKEN = 8
PIECES_CACHE = 512  # texts whose split is kept (a split is a pure function of text, budget and tokenizer)


@dataclass
class ChatterboxOptions:
    model_dir: str
    device: str = "cuda"
    dtype: str = "bfloat16"  # T3 and the flow decoder
    vocoder_dtype: str = "auto"  # auto: float16 on a GPU if the start-up check passes (``_load``), else float32
    max_streams: int = 64  # T3 KV-cache slots
    max_len: int = 1024  # positions per slot: voice prefix + text + speech tokens
    max_tokens: int = 750  # speech tokens per utterance (30 s)
    voice_cache_dir: str | None = None
    voice_wav: str | None = None  # the configured default voice: prepared and checked at start-up (None: conds.pt)
    temperature: float = 0.8
    top_k: int = 1000
    top_p: float = 0.95
    repetition_penalty: float = 1.2
    cuda_graphs: bool = True
    reference_attention: str = "block_causal"  # or "full": stock attention, the reference re-run in every window
    startup_checks: bool = True  # each fast path against its exact one on the voice, at load (``verify``)
    watermark: bool = True  # Perth's implicit watermark on every chunk, as stock Chatterbox marks its output
    seed: int | None = None  # sampling seed of every utterance (None: a new one each time)
    text_budget: int | None = None  # text tokens per utterance before a text is split (None: from the sizes below)
    overlap: bool = False  # S3Gen on its own CUDA stream beside T3's (scheduler docstring, "Overlap")
    t3_share: float = 1.0  # T3's GPU time between S3Gen batches, in batch durations (scheduler docstring)
    shared: SharedCacheConfig | None = None  # a fleet's Redis: voice conditioning computed once (voices.py)


class ChatterboxEngine(EngineBase):
    name = "chatterbox"
    sample_rate = SAMPLE_RATE

    def __init__(self, options: ChatterboxOptions) -> None:
        self.options = options
        self._scheduler = None
        self._voices: dict[str, object] = {}
        self._shared: SharedCache | None = None
        self._ckpt = None
        self.vocoder_snr_db: float | None = None  # the start-up check's result (lower-precision vocoder)
        self.checks: list = []  # verify.Check of each start-up check
        self.fallbacks: dict[str, float] = {}  # path -> figure, for every fast path replaced by its exact one
        self.checks_seconds = 0.0
        self.startup_seconds = 0.0
        self._watermarker = None
        self._marker = None  # watermark.BatchMarker: every stream's chunks marked in batches
        self._pieces: dict[tuple[str, int], tuple[str, ...]] = {}  # (text, budget) -> pieces: a repeated text splits once

    async def start(self) -> None:
        if self._scheduler is None:
            await asyncio.get_running_loop().run_in_executor(None, self._load)

    def _load(self) -> None:
        import time

        import torch

        from .checkpoint import load_checkpoint
        from .s3gen_streamer import S3GenStreamer
        from .scheduler import Scheduler
        from .t3_runner import SamplingParams, T3Runner

        started = time.perf_counter()
        o = self.options
        if o.device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError("engine chatterbox: device is cuda but no GPU is visible")
        if o.reference_attention not in ("block_causal", "full"):
            raise EngineError(f"engine chatterbox: reference_attention must be block_causal or full, "
                              f"not {o.reference_attention!r}")
        if o.device.startswith("cuda"):
            # The host side only launches kernels: a CPU thread pool would only spin (OpenMP
            # waits busily) on cores the server's RTP pacing needs.
            torch.set_num_threads(1)
        if o.watermark:
            from ..watermark import BatchMarker, WatermarkError, Watermarker

            try:
                self._watermarker = Watermarker(SAMPLE_RATE, o.device)
                self._marker = BatchMarker(self._watermarker)
            except WatermarkError as exc:
                raise EngineError(f"engine chatterbox: watermark: {exc}") from None
        self._ckpt = load_checkpoint(o.model_dir, o.device)
        paths = self._check_paths()
        sampling = SamplingParams(o.temperature, o.top_k, o.top_p, o.repetition_penalty)
        runner = T3Runner(self._ckpt.t3, o.device, getattr(torch, paths["t3"]), o.max_streams, o.max_len, sampling,
                          paths["graphs"])
        streamer = S3GenStreamer(self._ckpt.s3gen, o.device, flow_dtype=getattr(torch, paths["flow"]),
                                 hift_dtype=getattr(torch, paths["vocoder"]), cuda_graphs=paths["graphs"],
                                 reference_cache=paths["block_causal"], overlap=o.overlap)
        self._scheduler = Scheduler(runner, streamer, t3_share=o.t3_share)
        self._voices["default"] = self._make_voice("default", self._ckpt.conds)
        self._scheduler.capture_graphs(self._voices["default"])  # start-up is slower, first audio is not
        if o.startup_checks and streamer.graphs is not None:
            self._check_graphs(runner, streamer)
        if o.voice_wav:  # prepared now, not on the first call
            self._voice_for(VoiceSpec("default", (("voice_wav", o.voice_wav),)))
        self._scheduler.start()
        self.startup_seconds = time.perf_counter() - started
        log.info("chatterbox ready in %.1f s (start-up checks %.1f s)", self.startup_seconds, self.checks_seconds)

    def _check_paths(self) -> dict:
        """Which precision and attention each part runs with: the configured fast paths, each
        replaced by its exact one when the start-up check on the default voice says so."""
        from .verify import startup_checks

        o = self.options
        vocoder = o.vocoder_dtype if o.vocoder_dtype != "auto" else \
            ("float16" if o.device.startswith("cuda") else "float32")
        paths = dict(t3=o.dtype, flow=o.dtype, vocoder=vocoder, block_causal=o.reference_attention == "block_causal",
                     graphs=o.cuda_graphs)
        if not o.startup_checks:
            return paths
        assert self._ckpt is not None
        conds = self._ckpt.conds
        if o.voice_wav:  # the voice callers will hear
            from .voices import conditionals_from_wav

            cache = Path(o.voice_cache_dir) if o.voice_cache_dir else None
            conds = conditionals_from_wav(self._ckpt, Path(o.voice_wav), cache, o.device)
        result = startup_checks(self._ckpt, conds, self.tokenize, o.device, o.dtype, vocoder, paths["block_causal"])
        self.checks, self.checks_seconds = list(result.checks), result.seconds
        exact = {"t3.dtype": ("t3", "float32"), "flow.dtype": ("flow", "float32"),
                 "vocoder.dtype": ("vocoder", "float32"), "flow.reference_attention": ("block_causal", False)}
        for check in result.checks:
            if check.name == "vocoder.dtype.audio_snr_db":
                self.vocoder_snr_db = check.figure
            key, value = exact[check.path]
            if check.passed:
                log.info("start-up check %s: %.4g (threshold %s %.4g): fast path kept", check.name, check.figure,
                         ">=" if check.higher_is_better else "<=", check.threshold)
                continue
            paths[key] = value
            self.fallbacks[check.path] = check.figure
            log.warning("start-up check %s: %.4g, threshold %s %.4g: %s falls back to its exact path (%s=%s)",
                        check.name, check.figure, ">=" if check.higher_is_better else "<=", check.threshold,
                        check.path, check.setting, "full" if value is False else value)
        return paths

    def _check_graphs(self, runner: object, streamer: object) -> None:
        """The captured S3Gen graphs against eager windows on the default voice; off if they differ."""
        import time

        from .verify import graphs_check

        t0 = time.perf_counter()
        voice = self._voices["default"]
        check = graphs_check(streamer, voice.gen, self._ckpt.conds.gen)  # type: ignore[union-attr, attr-defined]
        self.checks.append(check)
        self.checks_seconds += time.perf_counter() - t0
        if not check.passed:
            streamer.graphs = streamer.encoder_graphs = streamer.vocoder_graphs = None  # type: ignore[attr-defined]
            self.fallbacks[check.path] = check.figure
            log.warning("start-up check %s: %.4g, threshold >= %.4g: S3Gen runs without CUDA graphs "
                        "(cuda_graphs=false)", check.name, check.figure, check.threshold)

    def _make_voice(self, name: str, conds: object) -> object:
        from .scheduler import Voice

        assert self._scheduler is not None
        prefix = self._scheduler.runner.voice_prefix(conds.t3)  # type: ignore[attr-defined]
        gen = self._scheduler.streamer.prepare_voice(conds.gen)  # type: ignore[attr-defined]
        return Voice(name, prefix, gen)

    def _voice_for(self, spec: VoiceSpec) -> object:
        wav = spec.get("voice_wav")
        if not wav:
            return self._voices["default"]
        key = str(wav)
        if key not in self._voices:
            from .voices import conditionals_from_wav

            assert self._ckpt is not None
            cache = Path(self.options.voice_cache_dir) if self.options.voice_cache_dir else None
            if self.options.shared is not None and self._shared is None:
                self._shared = SharedCache(self.options.shared)
            conds = conditionals_from_wav(self._ckpt, Path(key), cache, self.options.device, self._shared)
            self._voices[key] = self._make_voice(key, conds)
        return self._voices[key]

    def tokenize(self, text: str) -> "object":
        from chatterbox.tts_turbo import punc_norm

        assert self._ckpt is not None
        return self._ckpt.tokenizer(punc_norm(text), return_tensors="pt").input_ids[0]

    def text_budget(self) -> int:
        """Text tokens one utterance may carry: its speech (about ``SPEECH_PER_TEXT_TOKEN`` tokens
        per text token) must fit in ``max_tokens`` and, with the text, in the cache after the prefix."""
        o = self.options
        if o.text_budget is not None:
            return o.text_budget
        voice = self._voices.get("default")
        prefix = voice.prefix.length if voice is not None else 400  # type: ignore[attr-defined]
        room = o.max_len - prefix - 2
        return max(8, min(room // (SPEECH_PER_TEXT_TOKEN + 1), o.max_tokens // SPEECH_PER_TEXT_TOKEN))

    def count_tokens(self, text: str) -> int:
        """``len(tokenize(text))`` without the tensor and the Python wrapper: the Rust tokenizer's
        encode (same ids: the same normaliser, pre-tokenizer, model and post-processor).
        ``pieces`` counts a long text's sentences, words and joins (26 counts for api_load's
        88-character text at a budget of 18): through ``tokenize`` that was 1.4 ms of the engine
        loop per request, 45 ms before the 32nd request of a burst was submitted (run 47)."""
        from chatterbox.tts_turbo import punc_norm

        assert self._ckpt is not None
        backend = getattr(self._ckpt.tokenizer, "backend_tokenizer", None)
        if backend is None:  # a slow (Python) tokenizer
            return int(self.tokenize(text).numel())
        return len(backend.encode(punc_norm(text)).ids)

    def pieces(self, text: str) -> list[str]:
        """The utterances ``text`` is spoken as (``text.split_text``); ``EngineError`` if it has nothing to say."""
        from .text import check_text, split_text

        clean = check_text(text)
        key = (clean, self.text_budget())
        cached = self._pieces.get(key)
        if cached is None:  # a burst of one prompt (IVR, api_load) counts its tokens once, not per request
            cached = tuple(split_text(clean, self.count_tokens, key[1]))
            if len(self._pieces) >= PIECES_CACHE:
                self._pieces.pop(next(iter(self._pieces)))  # the oldest entry
            self._pieces[key] = cached
        return list(cached)

    async def stream(self, text: str, voice: VoiceSpec, background: bool = False) -> AsyncIterator[np.ndarray]:
        """The utterances of ``text`` back to back: the next one is submitted when the current
        one's first audio comes, so it is ready before the current one has played."""
        from .scheduler import Request

        await self.start()
        assert self._scheduler is not None
        loop = asyncio.get_running_loop()
        pieces = self.pieces(text)
        voice_obj = await loop.run_in_executor(None, self._voice_for, voice)
        sampling, seed = self._generation(voice)
        marker = self._marker

        def submit(piece: str, index: int) -> tuple[Request, "asyncio.Queue"]:
            out: "asyncio.Queue[np.ndarray | BaseException | None]" = asyncio.Queue()

            def send(item: "np.ndarray | BaseException | None") -> None:
                loop.call_soon_threadsafe(out.put_nowait, item)

            def deliver(item: "np.ndarray | BaseException | None") -> None:
                if marker is not None:  # marked off the GPU worker, with the other streams' chunks
                    marker.put(send, item)
                else:
                    send(item)

            req = Request(self.tokenize(piece), voice_obj, deliver,  # type: ignore[arg-type]
                          max_tokens=self.options.max_tokens, seed=seed + index, background=background,
                          sampling=sampling)
            self._scheduler.submit(req)  # type: ignore[union-attr]
            return req, out

        running = [submit(pieces[0], 0)]
        skip = LEAD_ZEROS  # the first utterance's zeroed lead-in, dropped
        try:
            for i in range(len(pieces)):
                req, out = running[i]
                while True:
                    item = await out.get()
                    if item is None:
                        break
                    if isinstance(item, BaseException):
                        raise EngineError(f"synthesis failed: {item}") from item
                    if len(running) == i + 1 and i + 1 < len(pieces):
                        running.append(submit(pieces[i + 1], i + 1))
                    if skip:
                        cut = min(skip, item.size)
                        item, skip = item[cut:], skip - cut
                        if not item.size:
                            continue
                    yield item
        finally:
            for req, _ in running:
                req.cancel()

    def _generation(self, voice: VoiceSpec) -> tuple[object, int]:
        """Sampling settings of one request: the engine's defaults, overridden by the voice's."""
        from .generation import settings_for

        return settings_for(self.options, voice)

    @property
    def stats(self) -> EngineStats:
        """T3 decode steps and their batch sizes; GPU worker time (T3 + S3Gen) and audio produced."""
        if self._scheduler is None:
            return EngineStats()
        st = self._scheduler.stats
        checks = tuple((c.path, float(c.figure), c.path not in self.fallbacks) for c in self.checks if not c.skipped)
        return EngineStats(st.steps, st.step_batch_sum, st.t3_seconds + st.s3_seconds, st.audio_seconds, checks)

    def queue_depth(self) -> int:
        """Utterances submitted but not yet admitted into a decoding slot."""
        return self._scheduler.queue_depth if self._scheduler is not None else 0

    async def close(self) -> None:
        if self._scheduler is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._scheduler.stop)
            self._scheduler = None
        if self._marker is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._marker.close)
            self._marker = None
