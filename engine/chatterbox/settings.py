"""Chatterbox Turbo's settings (server.yaml ``engine:``), its factory and its voices.

Light to import: torch and the models load only when ``build`` is called and the engine starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..base import Resolve, TtsEngine, VoiceSpec
from ..shared_cache import SharedCacheConfig


class ChatterboxSettings(BaseModel):
    """server.yaml ``engine: {kind: chatterbox, ...}``: Chatterbox Turbo (torch is imported only
    when the engine is built)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["chatterbox"]
    model_dir: str = Field(description="local checkpoint directory (public Chatterbox Turbo layout)")
    device: str = "cuda"
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    vocoder_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="HiFT's precision; auto: float16 on a GPU (1.35x faster on an H100) when its audio on "
                            "the voice's reference is >= 40 dB from float32 (checked at start-up), else float32")
    voice_wav: str | None = Field(None, description="reference WAV (>= 5 s) for the default voice; "
                                                    "none: the checkpoint's built-in voice (conds.pt)")
    voice_cache_dir: str | None = Field(None, description="where computed voice conditioning is kept")
    max_streams: int = Field(64, ge=1, le=512, description="utterances decoded together (KV-cache slots)")
    max_tokens: int = Field(750, ge=10, le=4000, description="speech tokens per utterance (25 per second)")
    temperature: float = Field(0.8, gt=0, le=2)
    top_k: int = Field(1000, ge=1)
    top_p: float = Field(0.95, gt=0, le=1)
    repetition_penalty: float = Field(1.2, ge=1, le=3)
    seed: int | None = Field(None, ge=0, description="sampling seed of every utterance (repeatable speech); "
                                                     "none: a new one each time")
    # the fast paths and their exact counterparts (README, 'verify-engine')
    reference_attention: Literal["block_causal", "full"] = Field(
        "block_causal", description="block_causal: the voice reference attends only to itself, computed once per "
                                    "voice; full: stock attention, the reference re-run in every window (slower)")
    cuda_graphs: bool = Field(True, description="GPU: replay T3 and S3Gen as CUDA graphs (off: eager kernels)")
    startup_checks: bool = Field(True, description="at start-up, check each fast path against its exact one on "
                                                   "the voice; a path below its threshold falls back (log + metric)")
    watermark: bool = Field(True, description="Resemble's Perth implicit watermark on all audio, as stock "
                                              "Chatterbox marks its output (needs resemble-perth)")
    overlap: bool = Field(False, description="GPU: S3Gen on its own CUDA stream beside T3's (higher priority): "
                                             "~4% more throughput, but more late frames near capacity (H100: "
                                             "64 vs 0 at 128 streams); off: T3 and S3Gen alternate")
    t3_share: float = Field(1.0, ge=0.25, le=8, description="T3's GPU time between S3Gen batches, in batch "
                            "durations: 1 favours first audio; 2 makes S3Gen batches larger and carries more "
                            "streams (H100: late frames at 192 streams 54,929 -> 111) at ~200 ms more first-audio "
                            "p95 under load")
    process: bool = Field(True, description="run the engine in its own process, so the GPU worker's Python "
                                            "never delays RTP pacing (restarted if it dies)")

    # what a named voice may set: its reference WAV and its own sampling (default: the engine's)
    voice_fields: ClassVar[tuple[str, ...]] = ("wav", "temperature", "top_k", "top_p", "repetition_penalty", "seed")
    # settings passed to ChatterboxOptions under the same name
    _same: ClassVar[tuple[str, ...]] = (
        "device", "dtype", "vocoder_dtype", "max_streams", "max_tokens", "temperature", "top_k", "top_p",
        "repetition_penalty", "overlap", "t3_share", "reference_attention", "cuda_graphs", "startup_checks",
        "watermark", "seed")

    def options(self, resolve: Resolve, shared: SharedCacheConfig | None = None):
        """The engine's options, paths resolved (``ChatterboxOptions``; imports torch lazily)."""
        from .engine import ChatterboxOptions

        return ChatterboxOptions(
            model_dir=resolve(self.model_dir) or self.model_dir, voice_cache_dir=resolve(self.voice_cache_dir),
            voice_wav=resolve(self.voice_wav), shared=shared,  # the fleet's Redis (None: off)
            **{name: getattr(self, name) for name in self._same})

    def build(self, resolve: Resolve, shared: SharedCacheConfig | None = None) -> tuple[TtsEngine, VoiceSpec]:
        from .engine import SAMPLE_RATE, ChatterboxEngine

        options = self.options(resolve, shared)
        voice = VoiceSpec("default", (("voice_wav", resolve(self.voice_wav)),) if self.voice_wav else ())
        if self.process:
            from ..process import EngineProcess

            return EngineProcess("chatterbox", SAMPLE_RATE, "engine.chatterbox.engine:ChatterboxEngine",
                                 args=(options,)), voice
        return ChatterboxEngine(options), voice

    @classmethod
    def named_voice(cls, name: str, default: VoiceSpec, fields: dict[str, object],
                    resolve: Callable[[str], Path]) -> VoiceSpec:
        """A reference WAV (relative to the prompts file), else the default voice; plus the voice's own
        sampling settings."""
        wav = fields.get("wav")
        settings = dict(default.settings) if wav is None else {"voice_wav": str(resolve(str(wav)))}
        settings.update({key: value for key, value in fields.items() if key != "wav"})
        return VoiceSpec(name, tuple(settings.items()))
