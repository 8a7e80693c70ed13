"""Engine construction from config, and the audio source a call plays."""

from __future__ import annotations

from dataclasses import dataclass

from config.schema import EspeakSettings, ServerConfig
from engine.audio import LineEncoder
from engine.base import TtsEngine, VoiceSpec
from engine.espeak import EspeakEngine
from telephony.rtp.pacer import FrameQueue


def build_engine(cfg: ServerConfig) -> tuple[TtsEngine, VoiceSpec]:
    """The configured engine and its default voice."""
    settings = cfg.engine
    if isinstance(settings, EspeakSettings):
        voice = VoiceSpec("default", (("voice", settings.voice), ("rate", settings.rate), ("pitch", settings.pitch)))
        return EspeakEngine(default_voice=settings.voice), voice
    raise SystemExit(f"engine {settings.kind!r} is not available in this build")


@dataclass
class SpokenPrompt:
    """Streams one text through the engine into a call's frame queue as G.711."""

    engine: TtsEngine
    text: str
    voice: VoiceSpec
    codec: str

    async def run(self, queue: FrameQueue) -> None:
        encoder = LineEncoder(self.engine.sample_rate, self.codec)
        async for chunk in self.engine.stream(self.text, self.voice):
            queue.push(encoder.encode(chunk))
        queue.push(encoder.finish())
