"""server.yaml's ``engine: {kind: chatterbox, ...}`` → the engine's options (paths resolved), for
the tools that build the engine themselves (verify-engine)."""

from __future__ import annotations

from pathlib import Path

from config.schema import ChatterboxSettings, ServerConfig


def chatterbox_options(cfg: ServerConfig):
    """The engine options (``ChatterboxOptions``) and the default voice's reference WAV (None: the
    checkpoint's conds.pt)."""
    settings = cfg.engine
    assert isinstance(settings, ChatterboxSettings)
    base = cfg.source.parent if cfg.source is not None else None

    def resolve(path: str | None) -> str | None:
        if path is None or base is None or Path(path).is_absolute():
            return path
        return str(base / path)

    return settings.options(resolve), resolve(settings.voice_wav)
