"""Engine construction from config, and the audio source a call plays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from config.schema import EspeakSettings, ServerConfig
from engine.prompt_cache import render_speech
from engine.base import TtsEngine, VoiceSpec
from engine.espeak import EspeakEngine
from sip_tts.fleet import shared_config
from telephony.call import CallHandle


def build_engine(cfg: ServerConfig) -> tuple[TtsEngine, VoiceSpec]:
    """The configured engine and its default voice."""
    settings = cfg.engine
    if isinstance(settings, EspeakSettings):
        voice = VoiceSpec("default", (("voice", settings.voice), ("rate", settings.rate), ("pitch", settings.pitch)))
        if settings.process:
            from engine.process import EngineProcess

            return EngineProcess("espeak", 22050, "engine.espeak:EspeakEngine",
                                 kwargs={"default_voice": settings.voice}), voice
        return EspeakEngine(default_voice=settings.voice), voice
    from engine.chatterbox.engine import ChatterboxEngine, ChatterboxOptions  # torch is imported lazily

    base = cfg.source.parent if cfg.source is not None else None

    def resolve(path: str | None) -> str | None:
        if path is None or base is None or Path(path).is_absolute():
            return path
        return str(base / path)

    options = ChatterboxOptions(
        model_dir=resolve(settings.model_dir) or settings.model_dir, device=settings.device, dtype=settings.dtype,
        vocoder_dtype=settings.vocoder_dtype,
        max_streams=settings.max_streams, max_tokens=settings.max_tokens,
        voice_cache_dir=resolve(settings.voice_cache_dir), temperature=settings.temperature,
        top_k=settings.top_k, top_p=settings.top_p, repetition_penalty=settings.repetition_penalty,
        overlap=settings.overlap, t3_share=settings.t3_share,
        shared=shared_config(cfg))  # the fleet's Redis: voices computed once (None: off)
    voice = VoiceSpec("default", (("voice_wav", resolve(settings.voice_wav)),) if settings.voice_wav else ())
    if settings.process:
        from engine.process import EngineProcess

        return EngineProcess("chatterbox", ChatterboxEngine.sample_rate, "engine.chatterbox.engine:ChatterboxEngine",
                             args=(options,)), voice
    return ChatterboxEngine(options), voice


@dataclass
class SpokenPrompt:
    """Streams one text through the engine into a call's frame queue as G.711."""

    engine: TtsEngine
    text: str
    voice: VoiceSpec
    codec: str

    async def run(self, call: CallHandle) -> None:
        await render_speech(self.engine, self.voice, self.text, self.codec, push=call.queue.push)
