"""The one interface every TTS engine offers, and the voice settings it receives.

An engine has a native sample rate and an async ``stream(text, voice)`` that
yields float32 mono chunks in [-1, 1] as soon as they exist. Closing the
iterator (``aclose()``, or cancelling the task that iterates) stops synthesis
promptly. Synthesis runs off the event loop; the loop only receives chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol

import numpy as np


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
    name: str
    sample_rate: int

    async def start(self) -> None:
        """Load models / warm up; called once before the first call is taken."""

    def stream(self, text: str, voice: VoiceSpec, background: bool = False) -> AsyncIterator[np.ndarray]:
        """Yield float32 chunks at ``sample_rate`` until the utterance ends.

        ``background``: nobody is listening yet (rendering into the prompt cache): the engine
        may serve it after every caller's audio, never at their expense."""
        ...

    async def close(self) -> None:
        """Stop workers and free resources."""
