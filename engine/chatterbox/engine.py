"""The Chatterbox Turbo engine behind the common streaming interface.

``stream(text, voice)`` submits one utterance to the GPU worker and yields its
24 kHz float32 chunks as they are produced. Closing the iterator (the caller
hung up, barge-in) cancels the request; the worker frees its slot before its
next step.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import numpy as np

from ..base import EngineBase, EngineError, EngineStats, VoiceSpec
from ..shared_cache import SharedCache, SharedCacheConfig

log = logging.getLogger(__name__)
SAMPLE_RATE = 24000
# A lower-precision vocoder is kept only if its audio on the default voice's reference mel is
# this close to float32's. H100, random weights: float16 48.9 dB (1.35x faster), bfloat16 31 dB.
# For scale, G.711's own quantisation noise is about 38 dB below a full-scale signal.
MIN_VOCODER_SNR_DB = 40.0


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
    temperature: float = 0.8
    top_k: int = 1000
    top_p: float = 0.95
    repetition_penalty: float = 1.2
    cuda_graphs: bool = True
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
        self._seeds = itertools.count(1)
        self.vocoder_snr_db: float | None = None  # the start-up check's result (lower-precision vocoder)

    async def start(self) -> None:
        if self._scheduler is None:
            await asyncio.get_running_loop().run_in_executor(None, self._load)

    def _load(self) -> None:
        import torch

        from .checkpoint import load_checkpoint
        from .s3gen_streamer import S3GenStreamer
        from .scheduler import Scheduler
        from .t3_runner import SamplingParams, T3Runner

        o = self.options
        if o.device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError("engine chatterbox: device is cuda but no GPU is visible")
        if o.device.startswith("cuda"):
            # The host side only launches kernels: a CPU thread pool would only spin (OpenMP
            # waits busily) on cores the server's RTP pacing needs.
            torch.set_num_threads(1)
        dtype = getattr(torch, o.dtype)
        self._ckpt = load_checkpoint(o.model_dir, o.device)
        sampling = SamplingParams(o.temperature, o.top_k, o.top_p, o.repetition_penalty)
        runner = T3Runner(self._ckpt.t3, o.device, dtype, o.max_streams, o.max_len, sampling, o.cuda_graphs)
        vocoder = o.vocoder_dtype if o.vocoder_dtype != "auto" else \
            ("float16" if o.device.startswith("cuda") else "float32")
        streamer = S3GenStreamer(self._ckpt.s3gen, o.device, flow_dtype=dtype, hift_dtype=getattr(torch, vocoder),
                                 overlap=o.overlap)
        if vocoder != "float32":
            # The speed-up of a float16 vocoder was measured with random weights; whether this
            # checkpoint's activations suit it is checked here, on the default voice's reference mel.
            snr = streamer.vocoder_snr_db(self._ckpt.conds.gen["prompt_feat"])
            if snr >= MIN_VOCODER_SNR_DB:
                log.info("vocoder in %s: %.1f dB against float32 on the reference", vocoder, snr)
            else:
                log.warning("vocoder in %s is %.1f dB from float32 on the reference (< %.0f): using float32",
                            vocoder, snr, MIN_VOCODER_SNR_DB)
                streamer = S3GenStreamer(self._ckpt.s3gen, o.device, flow_dtype=dtype, overlap=o.overlap)
            self.vocoder_snr_db = snr
        self._scheduler = Scheduler(runner, streamer, t3_share=o.t3_share)
        self._voices["default"] = self._make_voice("default", self._ckpt.conds)
        self._scheduler.capture_graphs(self._voices["default"])  # start-up is slower, first audio is not
        self._scheduler.start()

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

    async def stream(self, text: str, voice: VoiceSpec, background: bool = False) -> AsyncIterator[np.ndarray]:
        from .scheduler import Request

        await self.start()
        assert self._scheduler is not None
        loop = asyncio.get_running_loop()
        voice_obj = await loop.run_in_executor(None, self._voice_for, voice)
        out: "asyncio.Queue[np.ndarray | BaseException | None]" = asyncio.Queue()

        def deliver(item: "np.ndarray | BaseException | None") -> None:
            loop.call_soon_threadsafe(out.put_nowait, item)

        req = Request(self.tokenize(text), voice_obj, deliver,  # type: ignore[arg-type]
                      max_tokens=self.options.max_tokens, seed=next(self._seeds), background=background)
        self._scheduler.submit(req)
        try:
            while True:
                item = await out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise EngineError(f"synthesis failed: {item}") from item
                yield item
        finally:
            req.cancel()

    @property
    def stats(self) -> EngineStats:
        """T3 decode steps and their batch sizes; GPU worker time (T3 + S3Gen) and audio produced."""
        if self._scheduler is None:
            return EngineStats()
        st = self._scheduler.stats
        return EngineStats(st.steps, st.step_batch_sum, st.t3_seconds + st.s3_seconds, st.audio_seconds)

    def queue_depth(self) -> int:
        """Utterances submitted but not yet admitted into a decoding slot."""
        return self._scheduler.queue_depth if self._scheduler is not None else 0

    async def close(self) -> None:
        if self._scheduler is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._scheduler.stop)
            self._scheduler = None
