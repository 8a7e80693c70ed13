"""Voices from a reference WAV: conditioning computed once and cached on disk.

The same steps as the stock ``prepare_conditionals``: loudness-normalised
reference at 24 kHz (first 10 s) for S3Gen's reference (tokens, mel, x-vector),
and at 16 kHz (first 15 s) for T3's 375 prompt tokens and the voice-encoder
speaker embedding. The result is saved as a ``conds.pt``-style file named by
the WAV's SHA-256, so a restart (or a second instance) reuses it; with a fleet's
shared cache (Redis) it is also stored there, and an instance without it on disk
takes it from there instead of computing it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from pathlib import Path

import numpy as np

from ..base import EngineError
from ..shared_cache import SharedCache
from .checkpoint import PROMPT_TOKENS, Checkpoint

log = logging.getLogger("engine.chatterbox.voices")

MIN_SECONDS = 5.0
S3GEN_SR = 24000
S3_SR = 16000


def _normalise_loudness(wav: np.ndarray, sr: int, target_lufs: float = -27.0) -> np.ndarray:
    import pyloudnorm

    try:
        loudness = pyloudnorm.Meter(sr).integrated_loudness(wav)
        gain = 10.0 ** ((target_lufs - loudness) / 20.0)
        if math.isfinite(gain) and gain > 0:
            wav = wav * gain
    except ValueError:
        pass  # too short or silent: keep as is
    return wav.astype(np.float32)  # pyloudnorm returns float64 (breaks the stock tokenizer)


def conditionals_from_wav(ckpt: Checkpoint, wav_path: Path, cache_dir: Path | None, device: str,
                          shared: SharedCache | None = None) -> object:
    import librosa
    import torch
    from chatterbox.models.t3.modules.cond_enc import T3Cond
    from chatterbox.tts_turbo import Conditionals

    if not wav_path.is_file():
        raise EngineError(f"{wav_path}: voice reference WAV not found")
    digest = hashlib.sha256(wav_path.read_bytes()).hexdigest()[:32]
    cached = cache_dir / f"voice-{digest}.pt" if cache_dir else None
    if cached is not None and cached.is_file():
        return Conditionals.load(cached, map_location="cpu").to(device)
    if shared is not None:  # keyed by the WAV's hash; the cache's namespace holds the checkpoint's and versions
        blob = shared.get_blocking("voice", digest)
        if blob is not None:
            try:
                conds = Conditionals.load(io.BytesIO(blob), map_location="cpu")
            except Exception as exc:  # a well-formed entry that torch cannot read: compute it instead
                log.warning("voice %s from the shared cache is unreadable (%s): computing it", wav_path, exc)
            else:
                if cached is not None:
                    _write_atomically(cached, blob)
                return conds.to(device)

    wav, _ = librosa.load(str(wav_path), sr=S3GEN_SR)
    if len(wav) / S3GEN_SR < MIN_SECONDS:
        raise EngineError(f"{wav_path}: voice reference must be at least {MIN_SECONDS:.0f} s long")
    wav = _normalise_loudness(wav, S3GEN_SR)
    wav16 = librosa.resample(wav, orig_sr=S3GEN_SR, target_sr=S3_SR)
    with torch.inference_mode():
        gen = ckpt.s3gen.embed_ref(wav[: 10 * S3GEN_SR], S3GEN_SR, device=device)
        prompt, _ = ckpt.s3gen.tokenizer.forward([wav16[: 15 * S3_SR]], max_len=PROMPT_TOKENS)
        speaker = torch.from_numpy(ckpt.ve.embeds_from_wavs([wav16], sample_rate=S3_SR))
        speaker = speaker.mean(axis=0, keepdim=True)
    t3 = T3Cond(speaker_emb=speaker.to(device), cond_prompt_speech_tokens=torch.atleast_2d(prompt).to(device),
                emotion_adv=0.5 * torch.ones(1, 1, 1)).to(device=device)
    conds = Conditionals(t3, gen)
    buf = io.BytesIO()
    conds.save(buf)
    if cached is not None:
        _write_atomically(cached, buf.getvalue())
    if shared is not None:
        shared.put_blocking("voice", digest, buf.getvalue())
    return conds


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
