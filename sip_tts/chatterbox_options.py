"""server.yaml's ``engine: {kind: chatterbox, ...}`` → the engine's options (paths resolved)."""

from __future__ import annotations

from pathlib import Path

from config.schema import ChatterboxSettings, ServerConfig
from engine.chatterbox.engine import ChatterboxOptions  # torch is imported lazily there

# settings passed through unchanged (same name in the config and in ChatterboxOptions)
_SAME = ("device", "dtype", "vocoder_dtype", "max_streams", "max_tokens", "temperature", "top_k", "top_p",
         "repetition_penalty", "overlap", "t3_share", "reference_attention", "cuda_graphs", "startup_checks",
         "watermark", "seed")


def chatterbox_options(cfg: ServerConfig) -> tuple[ChatterboxOptions, str | None]:
    """The engine options and the default voice's reference WAV (None: the checkpoint's conds.pt)."""
    settings = cfg.engine
    assert isinstance(settings, ChatterboxSettings)
    base = cfg.source.parent if cfg.source is not None else None

    def resolve(path: str | None) -> str | None:
        if path is None or base is None or Path(path).is_absolute():
            return path
        return str(base / path)

    values = {name: getattr(settings, name) for name in _SAME if hasattr(settings, name)}
    wav = resolve(settings.voice_wav)
    options = ChatterboxOptions(model_dir=resolve(settings.model_dir) or settings.model_dir,
                                voice_cache_dir=resolve(settings.voice_cache_dir), voice_wav=wav, **values)
    return options, wav
