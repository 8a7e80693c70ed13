"""Voice conditioning shared through a real redis-server: stored by one instance, taken by the next.

Instance A stores a voice's conditioning the way ``conditionals_from_wav`` does after
computing it (``Conditionals.save`` bytes under the WAV's hash); instance B, with an
empty disk cache and no checkpoint at all (``ckpt=None``: computing would fail), takes
it from Redis and keeps it on its disk. (Computing conditioning needs the full-size
S3Gen and voice encoder: ~60 s on this CPU, so the compute-and-store half runs in
the GPU tests, not here.)
"""

from __future__ import annotations

import hashlib
import io

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("chatterbox")

from chatterbox.models.t3.modules.cond_enc import T3Cond  # noqa: E402
from chatterbox.tts_turbo import Conditionals  # noqa: E402

from engine.chatterbox.voices import conditionals_from_wav  # noqa: E402
from engine.shared_cache import SharedCache, SharedCacheConfig, pack  # noqa: E402
from sip_tests.test_redis_cache import redis_server  # noqa: E402,F401  (fixture)

pytestmark = pytest.mark.timeout(120)


def synthetic_conditionals() -> Conditionals:
    g = torch.Generator().manual_seed(7)
    t3 = T3Cond(speaker_emb=torch.randn(1, 256, generator=g),
                cond_prompt_speech_tokens=torch.randint(0, 6561, (1, 375), generator=g),
                emotion_adv=0.5 * torch.ones(1, 1, 1))
    gen = {"prompt_token": torch.randint(0, 6561, (1, 250), generator=g), "prompt_token_len": torch.tensor([250]),
           "prompt_feat": torch.randn(1, 500, 80, generator=g), "prompt_feat_len": None,
           "embedding": torch.randn(1, 192, generator=g)}
    return Conditionals(t3, gen)


def test_a_voice_stored_by_one_instance_is_taken_from_redis_by_another(redis_server, tmp_path):  # noqa: F811
    r = redis_server()
    conf = SharedCacheConfig(url=r.url, namespace="chatterbox/checkpoint-fingerprint", timeout_ms=200)
    wav = tmp_path / "ref.wav"
    wav.write_bytes(b"RIFF-not-read-when-the-voice-is-shared" * 100)
    digest = hashlib.sha256(wav.read_bytes()).hexdigest()[:32]

    a = SharedCache(conf)
    conds = synthetic_conditionals()
    buf = io.BytesIO()
    conds.save(buf)
    a.put_blocking("voice", digest, buf.getvalue())
    assert a.writes == 1 and len(r.cmd("KEYS", "sip-tts:v1:voice:*")) == 1

    b = SharedCache(conf)
    got = conditionals_from_wav(None, wav, tmp_path / "cache-b", "cpu", shared=b)  # type: ignore[arg-type]
    assert b.hits == 1, "taken from Redis (with ckpt=None, computing would have raised)"
    assert torch.equal(got.t3.speaker_emb, conds.t3.speaker_emb)
    assert torch.equal(got.gen["prompt_feat"], conds.gen["prompt_feat"])
    on_disk = list((tmp_path / "cache-b").glob("voice-*.pt"))
    assert len(on_disk) == 1, "kept on B's disk too (the first level)"
    again = conditionals_from_wav(None, wav, tmp_path / "cache-b", "cpu", shared=b)  # type: ignore[arg-type]
    assert b.hits == 1 and torch.equal(again.t3.speaker_emb, conds.t3.speaker_emb), "from disk this time"

    # Another checkpoint is another namespace; a corrupted or foreign-format entry is ignored.
    c = SharedCache(SharedCacheConfig(url=r.url, namespace="chatterbox/another-checkpoint", timeout_ms=200))
    assert c.get_blocking("voice", digest) is None and c.misses == 1
    key = r.cmd("KEYS", "sip-tts:v1:voice:*")[0]
    r.cmd("SET", key, pack(buf.getvalue(), version=2))
    assert a.get_blocking("voice", digest) is None and a.rejected == 1
    r.cmd("SET", key, pack(buf.getvalue())[:-10])
    assert a.get_blocking("voice", digest) is None and a.rejected == 2

    # Redis gone: a lookup answers "none" at once (the voice is then computed locally), the error is counted.
    r.kill()
    assert b.get_blocking("voice", digest) is None
    assert b.errors >= 1 and not b.up
    for cache in (a, b, c):
        cache.close()
