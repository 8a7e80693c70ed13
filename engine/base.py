"""The one interface every TTS engine offers, and the voice settings it receives.

An engine has a native sample rate and an async ``stream(text, voice)`` that
yields float32 mono chunks in [-1, 1] as soon as they exist. Closing the
iterator (``aclose()``, or cancelling the task that iterates) stops synthesis
promptly. Synthesis runs off the event loop; the loop only receives chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Callable, ClassVar, Protocol

import numpy as np

from .audio import encode_line

if TYPE_CHECKING:
    from .shared_cache import SharedCacheConfig


class EngineError(RuntimeError):
    """Synthesis failed (bad voice, engine not loaded, worker died)."""


@dataclass(frozen=True)
class VoiceSpec:
    """Engine-specific voice settings, e.g. ``{"voice": "en-us", "rate": 160}`` for espeak."""

    name: str = "default"
    settings: tuple[tuple[str, object], ...] = field(default_factory=tuple)

    def get(self, key: str, default: object = None) -> object:
        return dict(self.settings).get(key, default)


@dataclass
class EngineStats:
    """Running totals an engine keeps for the metrics (Prometheus derives rates and ratios).

    ``steps``/``step_items``: batched steps and the utterances in them (mean batch size =
    rate of items / rate of steps); ``busy_seconds``/``audio_seconds``: worker time and
    audio produced (real-time factor = rate of busy / rate of audio).
    """

    steps: int = 0
    step_items: int = 0
    busy_seconds: float = 0.0
    audio_seconds: float = 0.0
    # start-up checks of the engine's fast paths: (path, measured figure, fast path kept)
    checks: tuple[tuple[str, float, bool], ...] = ()


class TtsEngine(Protocol):
    """Every member the application uses; ``EngineBase`` gives the optional ones their defaults."""

    name: str
    sample_rate: int
    stats: EngineStats  # running totals for the metrics
    restarts: int  # times the engine was restarted (an engine in its own process)

    async def start(self) -> None:
        """Load models / warm up; called once before the first call is taken."""

    def stream(self, text: str, voice: VoiceSpec, background: bool = False) -> AsyncIterator[np.ndarray]:
        """Yield float32 chunks at ``sample_rate`` until the utterance ends.

        ``background``: nobody is listening yet (rendering into the prompt cache): the engine
        may serve it after every caller's audio, never at their expense."""
        ...

    def stream_line(self, text: str, voice: VoiceSpec, codec: str, background: bool = False) -> AsyncIterator[bytes]:
        """The speech as 8 kHz G.711 (``codec``: PCMU or PCMA), as it is ready."""
        ...

    @property
    def available(self) -> bool:
        """Whether new calls can be served now (False while an engine process restarts)."""
        ...

    def queue_depth(self) -> int:
        """Utterances waiting for the engine."""
        ...

    async def close(self) -> None:
        """Stop workers and free resources."""


class EngineBase:
    """Defaults of the ``TtsEngine`` members an engine may leave out."""

    name: str
    sample_rate: int
    stats: EngineStats
    restarts: int = 0

    def stream_line(self, text: str, voice: VoiceSpec, codec: str, background: bool = False) -> AsyncIterator[bytes]:
        """Resampled and encoded here, on the event loop (an engine in its own process does it there)."""
        return encode_line(self.stream(text, voice, background=background), self.sample_rate, codec)

    @property
    def available(self) -> bool:
        return True  # an engine in this process is up once started

    def queue_depth(self) -> int:
        return 0


Resolve = Callable[[str | None], str | None]  # a path from a config file, made relative to that file


class EngineSettings(Protocol):
    """One engine kind as server.yaml's ``engine:`` section declares it (``engine/registry.py`` lists them).

    The settings model validates the section, builds the engine and its default voice, and turns a
    named voice of prompts.yaml (the ``voice_fields`` it reads) into the engine's ``VoiceSpec``."""

    kind: str
    voice_fields: ClassVar[tuple[str, ...]]

    def build(self, resolve: Resolve, shared: "SharedCacheConfig | None" = None) -> tuple[TtsEngine, VoiceSpec]:
        """``shared``: the fleet's Redis, for what an engine computes per voice (None: off)."""
        ...

    @classmethod
    def named_voice(cls, name: str, default: VoiceSpec, fields: dict[str, object],
                    resolve: Callable[[str], Path]) -> VoiceSpec: ...
