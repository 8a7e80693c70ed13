"""Resemble's Perth implicit watermark, as stock Chatterbox applies it to every output.

Stock ``ChatterboxTurboTTS.generate`` passes its audio through
``perth.PerthImplicitWatermarker``, so anyone with Perth's detector can tell the
speech is synthetic. resemble-perth 1.0.1 finds its bundled weights with
``pkg_resources.resource_filename``; setuptools >= 81 no longer ships
``pkg_resources``, and ``perth/__init__.py`` then sets ``PerthImplicitWatermarker``
to None without a word (stock code crashes, or runs unmarked). ``load`` gives Perth
the one function it uses when ``pkg_resources`` is missing (the package's own
``pretrained`` folder, found with ``importlib``), and fails loudly otherwise.

Streaming: the engine marks each chunk by itself as it leaves the GPU worker
(``Watermarker.apply``). Measured on espeak speech at 24 kHz (this repo's 2-core CPU,
chunks of 280, 300, 500 ms then 1 s as the scheduler's windows give them): the detector
gives 1.0 on the joined chunks as on the whole utterance marked at once (0.006 unmarked),
the chunked result is 32 dB from the whole-utterance one, and no join is a bigger step
than the speech's own 99.9th-percentile sample step (0.26 of it). Marking each chunk
with 170 ms of the previous one as context was no better (29 dB, 0.53) and cost more.
The cost per window on a GPU: ``benchmarks/engine_bench.py --watermark``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import threading
import types
from pathlib import Path

import numpy as np


class WatermarkError(RuntimeError):
    """Perth cannot be loaded (not installed, or its weights not found)."""


def _pkg_resources_shim() -> None:
    """A minimal ``pkg_resources`` (only ``resource_filename``) when setuptools has none."""
    try:
        import pkg_resources  # noqa: F401  (setuptools < 81 still has it)
        return
    except ImportError:
        pass

    def resource_filename(package: str, resource: str) -> str:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"package {package} not found")
        return str(Path(list(spec.submodule_search_locations)[0]) / resource)

    shim = types.ModuleType("pkg_resources")
    shim.resource_filename = resource_filename  # type: ignore[attr-defined]
    shim.__doc__ = "sip-tts: resource_filename only, for resemble-perth (engine/watermark.py)"
    sys.modules["pkg_resources"] = shim


def load(device: str = "cpu") -> "object":
    """Perth's implicit watermarker on ``device``; raises ``WatermarkError`` naming what is missing."""
    _pkg_resources_shim()
    try:
        from perth.perth_net.perth_net_implicit.perth_watermarker import PerthImplicitWatermarker
    except ImportError as exc:
        raise WatermarkError(f"resemble-perth is not installed or broken ({exc}); install it, or set "
                             "watermark: false") from None
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # perth prints "loaded PerthNet ..." (our stdout is the
            return PerthImplicitWatermarker(device=device)  # server's: its first line must be "ready")
    except Exception as exc:  # missing weights file, bad device
        raise WatermarkError(f"resemble-perth cannot load its watermark model ({exc})") from None


class Watermarker:
    """Marks audio whole or chunk by chunk (``stream``); thread-safe (one model, one lock)."""

    CONTEXT = 4096  # samples of the previous raw chunk processed in front of each new one (170 ms at 24 kHz)

    def __init__(self, sample_rate: int, device: str = "cpu") -> None:
        self.sample_rate = sample_rate
        self._model = load(device)
        self._lock = threading.Lock()

    def apply(self, audio: np.ndarray) -> np.ndarray:
        """The whole signal marked (float32, same length)."""
        if audio.size == 0:
            return audio
        with self._lock:
            out = self._model.apply_watermark(np.asarray(audio, dtype=np.float32),  # type: ignore[attr-defined]
                                              sample_rate=self.sample_rate)
        out = np.asarray(out, dtype=np.float32)
        if out.size != audio.size:  # Perth's STFT round trip may drop or add a few samples at the end
            out = np.pad(out, (0, max(0, audio.size - out.size)))[:audio.size]
        return np.clip(out, -1.0, 1.0)

    def detect(self, audio: np.ndarray) -> float:
        """Perth's detector: the fraction of its decoded watermark bits that are set (1.0: marked)."""
        with self._lock:
            bits = self._model.get_watermark(np.asarray(audio, dtype=np.float32),  # type: ignore[attr-defined]
                                             sample_rate=self.sample_rate, round=False)
        return float(np.mean(bits))
