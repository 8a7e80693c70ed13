"""Engine construction from config, and the audio source a call plays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from config.schema import ServerConfig
from engine.prompt_cache import render_speech
from engine.base import TtsEngine, VoiceSpec
from telephony.call import CallHandle

from .fleet import shared_config


def build_engine(cfg: ServerConfig) -> tuple[TtsEngine, VoiceSpec]:
    """The configured engine and its default voice (its kind's settings model builds them;
    paths in server.yaml are relative to that file)."""
    base = cfg.source.parent if cfg.source is not None else None

    def resolve(path: str | None) -> str | None:
        if path is None or base is None or Path(path).is_absolute():
            return path
        return str(base / path)

    return cfg.engine.build(resolve, shared_config(cfg))  # the fleet's Redis (None: off)


@dataclass
class SpokenPrompt:
    """Streams one text through the engine into a call's frame queue as G.711."""

    engine: TtsEngine
    text: str
    voice: VoiceSpec
    codec: str
    handles_digits = False
    early_media = False

    async def run(self, call: CallHandle) -> None:
        await render_speech(self.engine, self.voice, self.text, self.codec, push=call.queue.push)
