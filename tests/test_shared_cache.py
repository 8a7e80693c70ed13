"""Entries of the fleet's shared cache: what is accepted, what is ignored; the cache: config section."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from config.schema import ServerConfig
from engine.shared_cache import FORMAT, SharedCacheConfig, checkpoint_fingerprint, pack, unpack


def test_an_entry_round_trips_and_a_flipped_byte_or_another_version_is_refused():
    payload = bytes(range(256)) * 10
    assert unpack(pack(payload)) == payload
    assert unpack(pack(b"")) == b""
    blob = bytearray(pack(payload))
    blob[-1] ^= 1
    assert unpack(bytes(blob)) is None
    assert unpack(pack(payload, version=FORMAT + 1)) is None
    assert unpack(pack(payload)[:-1]) is None, "truncated"
    assert unpack(b"RIFF" + pack(payload)[4:]) is None, "not ours"
    assert unpack(b"") is None


def test_keys_hold_the_format_version_and_the_engine_namespace():
    pytest.importorskip("redis")
    from engine.shared_cache import SharedCache

    a = SharedCache(SharedCacheConfig(url="redis://127.0.0.1:1/0", namespace="espeak/1.51"))
    b = SharedCache(SharedCacheConfig(url="redis://127.0.0.1:1/0", namespace="espeak/1.52"))
    try:
        assert a.key("prompt", "k").startswith(f"sip-tts:v{FORMAT}:prompt:")
        assert a.key("prompt", "k") != b.key("prompt", "k"), "an engine upgrade never reads old audio"
        assert a.key("prompt", "k") != a.key("voice", "k")
    finally:
        a.close()
        b.close()


def test_checkpoint_fingerprint_follows_content_not_path(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "t3.safetensors").write_bytes(b"x" * 3_000_000)
    assert checkpoint_fingerprint(tmp_path / "a") == checkpoint_fingerprint(tmp_path / "b")
    (tmp_path / "b" / "t3.safetensors").write_bytes(b"x" * 2_999_999 + b"y")  # the last MiB changed
    assert checkpoint_fingerprint(tmp_path / "a") != checkpoint_fingerprint(tmp_path / "b")


def test_cache_section_names_a_bad_url_and_defaults_to_off():
    assert ServerConfig().cache.redis_url is None
    assert ServerConfig.model_validate({"cache": {"redis_url": "redis://10.0.0.5:6379/0"}}).cache.timeout_ms == 20
    with pytest.raises(ValidationError, match="redis_url"):
        ServerConfig.model_validate({"cache": {"redis_url": "http://10.0.0.5"}})
    with pytest.raises(ValidationError, match="timeout_ms"):
        ServerConfig.model_validate({"cache": {"redis_url": "redis://h", "timeout_ms": 0}})
