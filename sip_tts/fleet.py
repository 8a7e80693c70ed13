"""Wiring of the fleet's shared cache (Redis) from server.yaml's ``cache:`` section.

The namespace of every key is the engine's identity: its kind, the version of the
code that makes its audio and, for Chatterbox, a fingerprint of the checkpoint and
the settings that change what it says. Two instances share entries exactly when
they would render the same audio; an upgrade starts a fresh namespace.
"""

from __future__ import annotations

import json
import logging
from importlib import metadata
from pathlib import Path

from config.schema import ChatterboxSettings, ServerConfig
from engine.shared_cache import SharedCache, SharedCacheConfig, checkpoint_fingerprint

log = logging.getLogger("sip_tts.fleet")

# fields that change how fast or where audio is made, not what it is
_NOT_AUDIO = {"max_streams", "process", "overlap", "t3_share", "voice_cache_dir", "device", "model_dir", "voice_wav"}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def engine_namespace(cfg: ServerConfig) -> str:
    settings = cfg.engine
    ident: dict[str, object] = {"sip-tts": _version("sip-tts"), "kind": settings.kind}
    if isinstance(settings, ChatterboxSettings):
        ident["chatterbox-tts"] = _version("chatterbox-tts")
        model_dir = Path(settings.model_dir)
        if not model_dir.is_absolute() and cfg.source is not None:
            model_dir = cfg.source.parent / model_dir
        try:
            ident["checkpoint"] = checkpoint_fingerprint(model_dir)
        except OSError:
            ident["checkpoint"] = str(model_dir)  # the engine itself reports the missing checkpoint
        ident["settings"] = settings.model_dump(exclude=_NOT_AUDIO)
    else:
        ident["espeak-ng"] = _version("espeakng-loader")
    return json.dumps(ident, sort_keys=True)


def shared_config(cfg: ServerConfig) -> SharedCacheConfig | None:
    """The shared cache's settings, or None when ``cache.redis_url`` is not set."""
    c = cfg.cache
    if not c.redis_url:
        return None
    return SharedCacheConfig(url=c.redis_url, namespace=engine_namespace(cfg), timeout_ms=c.timeout_ms,
                             ttl_s=int(c.ttl_days * 86400), prefix=c.key_prefix)


def shared_cache(cfg: ServerConfig) -> SharedCache | None:
    conf = shared_config(cfg)
    if conf is None:
        return None
    log.info("shared cache: %s (timeout %g ms)", conf.url.split("@")[-1], conf.timeout_ms)
    return SharedCache(conf)
