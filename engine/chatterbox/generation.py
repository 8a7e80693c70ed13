"""Sampling settings of one utterance: stock Turbo's defaults, then the server's, the voice's,
the request's (a ``VoiceSpec`` carries the last two: prompts.yaml voices, API requests).

Stock ``ChatterboxTurboTTS.generate`` defaults: temperature 0.8, top_k 1000,
top_p 0.95, repetition_penalty 1.2 (``ChatterboxOptions`` starts from them). A
``seed`` makes an utterance repeatable: the same text, voice, settings and seed
give the same speech tokens (the sampler's noise is a function of the seed and
the position, ``t3_runner.seeded_exponential``) and the same S3Gen noise,
whether the utterance is decoded alone or beside others.
"""

from __future__ import annotations

import secrets
from typing import Any

from ..base import EngineError, VoiceSpec
from .t3_runner import SamplingParams

# key: (type, lowest, highest, lowest allowed itself)
LIMITS: dict[str, tuple[type, float, float, bool]] = {
    "temperature": (float, 0.0, 2.0, False),
    "top_k": (int, 1, 1_000_000, True),
    "top_p": (float, 0.0, 1.0, False),
    "repetition_penalty": (float, 1.0, 3.0, True),
    "seed": (int, 0, 2 ** 62 - 1, True),
}


def _value(key: str, raw: Any) -> float | int:
    kind, low, high, low_ok = LIMITS[key]
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or (kind is int and not float(raw).is_integer()):
        raise EngineError(f"{key}: must be {'an integer' if kind is int else 'a number'}, not {raw!r}")
    value = kind(raw)
    if value > high or value < low or (value == low and not low_ok):
        bound = f"{'>=' if low_ok else '>'} {low} and <= {high}"
        raise EngineError(f"{key}: must be {bound}, not {raw!r}")
    return value


def settings_for(options: Any, voice: VoiceSpec) -> tuple[SamplingParams, int]:
    """(sampling parameters, seed) for one utterance; ``EngineError`` names a bad setting."""
    values: dict[str, Any] = {k: getattr(options, k) for k in ("temperature", "top_k", "top_p", "repetition_penalty")}
    seed = getattr(options, "seed", None)
    for key in LIMITS:
        raw = voice.get(key)
        if raw is None:
            continue
        if key == "seed":
            seed = _value(key, raw)
        else:
            values[key] = _value(key, raw)
    if seed is None:
        seed = secrets.randbits(62)
    return SamplingParams(**values), int(seed)
