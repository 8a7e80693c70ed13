"""Engine construction from config, and the audio source a call plays."""

from __future__ import annotations

from dataclasses import dataclass

from config.schema import EspeakSettings, ServerConfig
from engine.prompt_cache import render_speech
from engine.base import TtsEngine, VoiceSpec
from engine.espeak import EspeakEngine
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
    from engine.chatterbox.engine import ChatterboxEngine

    from .chatterbox_options import chatterbox_options

    options, wav = chatterbox_options(cfg)
    voice = VoiceSpec("default", (("voice_wav", wav),) if wav else ())
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
