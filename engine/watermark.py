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


def torch_from(x: np.ndarray, device: object) -> "object":
    """Perth's input conversion (``perth_watermarker._to_tensor``): float32 on its device."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype=torch.float, device=device)


class Watermarker:
    """Marks audio whole or chunk by chunk (``stream``); thread-safe (one model, one lock)."""

    CONTEXT = 4096  # samples of the previous raw chunk processed in front of each new one (170 ms at 24 kHz)

    def __init__(self, sample_rate: int, device: str = "cpu") -> None:
        self.sample_rate = sample_rate
        self._model = load(device)
        self._lock = threading.Lock()

    @property
    def device(self) -> "object":
        return self._model.perth_net.device  # type: ignore[attr-defined]

    def apply(self, audio: np.ndarray) -> np.ndarray:
        """The whole signal marked (float32, same length)."""
        if audio.size == 0:
            return audio
        with self._lock:
            out = self._model.apply_watermark(np.asarray(audio, dtype=np.float32),  # type: ignore[attr-defined]
                                              sample_rate=self.sample_rate)
        return self._fit(out, audio.size)

    def apply_many(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        """Each chunk marked as ``apply`` marks it alone, in one pass per length.

        Windows of many streams come from the GPU together and mostly share a length (the
        scheduler's window sizes), so chunks of one length go through Perth's resampling, STFT,
        encoder and inverse STFT as one batch: one launch sequence (and one host round trip)
        for the group instead of one per chunk. Chunks are never padded, so every row is what
        ``apply`` gives for it (tests/test_watermark_batch.py)."""
        out: list[np.ndarray] = list(chunks)
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(chunks):
            if c.size:
                groups.setdefault(c.size, []).append(i)
        for size, rows in groups.items():
            batch = np.stack([np.asarray(chunks[i], dtype=np.float32) for i in rows])
            with self._lock:
                marked = self._mark_batch(batch)
            for i, row in zip(rows, marked):
                out[i] = self._fit(row, size)
        return out

    def _mark_batch(self, batch: np.ndarray) -> np.ndarray:
        """Perth's ``apply_watermark`` over the rows of ``batch`` (each row one signal)."""
        from librosa import resample

        net = self._model.perth_net  # type: ignore[attr-defined]
        rate = net.hp.sample_rate
        x = resample(batch, orig_sr=self.sample_rate, target_sr=rate, axis=-1) \
            if rate != self.sample_rate else batch
        signal = torch_from(x, net.device)
        magspec, phase = net.ap.signal_to_magphase(signal)
        wm_magspec, _mask = net.encoder(magspec)
        wm = net.ap.magphase_to_signal(wm_magspec, phase).detach().cpu().numpy()
        return resample(wm, orig_sr=rate, target_sr=self.sample_rate, axis=-1) if rate != self.sample_rate else wm

    @staticmethod
    def _fit(out: np.ndarray, size: int) -> np.ndarray:
        out = np.asarray(out, dtype=np.float32)
        if out.size != size:  # Perth's STFT round trip may drop or add a few samples at the end
            out = np.pad(out, (0, max(0, size - out.size)))[:size]
        return np.clip(out, -1.0, 1.0)

    def detect(self, audio: np.ndarray) -> float:
        """Perth's detector: the fraction of its decoded watermark bits that are set (1.0: marked)."""
        with self._lock:
            bits = self._model.get_watermark(np.asarray(audio, dtype=np.float32),  # type: ignore[attr-defined]
                                             sample_rate=self.sample_rate, round=False)
        return float(np.mean(bits))


class BatchMarker:
    """One thread that marks every stream's chunks, a batch at a time, in arrival order.

    The GPU worker hands each chunk (and each stream's end or error) to ``put`` as it delivers
    it; the thread takes whatever has arrived (waiting ``linger`` seconds for more: 0 by default,
    since a GPU batch's chunks are handed over back to back, and a 1 ms linger made 16 streams'
    first audio p95 175 ms against 142 without, run 46), marks the chunks in one ``apply_many``
    and passes every item on, in order, through its ``send``. Marking window by window on one thread cost 3.5-5.3 ms a window on an H200
    and, with 16 streams at once, took first audio p95 from 111 to 451 ms (engine_notes.md):
    the windows of one GPU batch queued behind each other, each waiting for the device (on the
    default CUDA stream, behind the worker's own queued work). On an H200 (run 44,
    benchmarks/watermark_batch.py) 32 one-second windows took 96 ms one at a time and 30 ms
    as one batch; 8 took 24 and 8 ms. On a GPU the thread marks on its own CUDA stream. In the
    engine (run 46, benchmarks/watermark_engine.py, one engine, H200): first audio of 16 streams
    at once p95 446 ms marking one chunk per pass, 142 ms batched, 114 ms unmarked; one stream
    at a time 88, 75 and 45 ms (the marking still costs ~30 ms there: not explained yet).
    """

    def __init__(self, watermarker: Watermarker, linger: float = 0.0, max_batch: int = 64,
                 own_stream: bool = True) -> None:
        import queue

        self.watermarker = watermarker
        self.own_stream = own_stream
        self.linger = linger
        self.max_batch = max_batch
        self.batches = 0  # marking passes (for tests and benchmarks)
        self.marked = 0  # chunks marked
        self._queue: "queue.Queue[tuple[object, object] | None]" = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="watermark", daemon=True)
        self._thread.start()

    def put(self, send: "object", item: object) -> None:
        """``send(item)`` later, ``item`` marked if it is audio (any thread; never blocks)."""
        self._queue.put((send, item))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)

    def _take(self) -> list[tuple[object, object]] | None:
        import queue

        first = self._queue.get()
        if first is None:
            return None
        items = [first]
        while len(items) < self.max_batch:
            try:
                nxt = self._queue.get(timeout=self.linger)
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)  # finish this batch, then stop
                break
            items.append(nxt)
        return items

    def _run(self) -> None:
        device = self.watermarker.device
        if device.type == "cuda" and self.own_stream:  # its own stream: marking never waits for the GPU worker's queued batches
            import torch

            torch.cuda.set_stream(torch.cuda.Stream(device))  # (pool streams do not sync with the default one)
        while (items := self._take()) is not None:
            audio = [i for i, (_, item) in enumerate(items) if isinstance(item, np.ndarray)]
            try:
                marked: list[object] = list(self.watermarker.apply_many([items[i][1] for i in audio]))  # type: ignore
            except Exception as exc:  # a failed pass fails its chunks' streams, never the thread
                marked = [WatermarkError(f"watermark failed: {exc}")] * len(audio)
            self.batches += 1
            self.marked += len(audio)
            out = [item for _, item in items]
            for i, m in zip(audio, marked):
                out[i] = m
            for (send, _), item in zip(items, out):
                try:
                    send(item)  # type: ignore[operator]
                except RuntimeError:  # the stream's event loop has closed
                    pass
