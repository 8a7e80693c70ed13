"""Redis memory per 1,000 cached prompts, measured: real espeak renders stored as the server stores them.

    python benchmarks/redis_sizing.py [--prompts 1000] [--codecs PCMU,PCMA]

Why: the shared cache (README "Fleet") keeps every fixed prompt once per codec; this is
what sizing Redis's maxmemory needs. Prompts are IVR-like sentences of varied length
(a greeting, a menu, a reference number...), rendered by the embedded espeak engine into
G.711 frames and written through ``SharedCache`` (header + frames, keys with the engine
namespace) into a redis-server started here (no persistence). Memory is Redis's
``used_memory`` after minus before, so it includes keys and per-entry overhead.
Run it inside a network namespace (it listens on loopback).

Writes benchmarks/results/redis_sizing.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.base import VoiceSpec  # noqa: E402
from engine.espeak import EspeakEngine  # noqa: E402
from engine.prompt_cache import frames_of, render_speech, speech_key  # noqa: E402
from engine.shared_cache import SharedCache, SharedCacheConfig  # noqa: E402
from benchmarks.hostload import md_report, md_table, write_result  # noqa: E402

SENTENCES = [
    "Thank you for calling {n}. Please hold while we connect you.",
    "Press one for sales, two for support, or three for billing. Customer number {n}.",
    "Your reference number is {n}. Please keep it for your records. Goodbye.",
    "Our offices are closed. Our opening hours are Monday to Friday, nine to five. Branch {n}.",
    "All of our agents are busy. Your call is important to us, and you are number {n} in the queue. "
    "Please stay on the line.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_info(port: int) -> dict[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"*1\r\n$4\r\nINFO\r\n")
        f = s.makefile("rb")
        n = int(f.readline()[1:])
        text = f.read(n + 2).decode()
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


async def render_all(n: int, codecs: list[str]) -> list[tuple[str, bytes]]:
    engine = EspeakEngine()
    await engine.start()
    voice = VoiceSpec("default", (("voice", "en-us"), ("rate", 165), ("pitch", 50)))
    out = []
    for i in range(n):
        text = SENTENCES[i % len(SENTENCES)].format(n=1000 + i)
        for codec in codecs:
            data = await render_speech(engine, voice, text, codec)
            out.append((speech_key(engine.name, voice, text, codec), b"".join(frames_of(data, codec))))
    await engine.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--codecs", default="PCMU,PCMA")
    args = ap.parse_args()
    codecs = args.codecs.split(",")
    t0 = time.monotonic()
    entries = asyncio.run(render_all(args.prompts, codecs))
    render_s = time.monotonic() - t0
    audio_bytes = sum(len(v) for _, v in entries)

    port = free_port()
    workdir = tempfile.mkdtemp()
    redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                              "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
                             stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                before = int(redis_info(port)["used_memory"])
                break
            except OSError:
                time.sleep(0.05)
        cache = SharedCache(SharedCacheConfig(url=f"redis://127.0.0.1:{port}/0", namespace="espeak/sizing",
                                              timeout_ms=500))
        for key, payload in entries:
            cache.put_blocking("prompt", key, payload)
        assert cache.writes == len(entries), "every entry written"
        info = redis_info(port)
        after = int(info["used_memory"])
        cache.close()
    finally:
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)

    per_1000 = (after - before) / args.prompts * 1000
    audio_s = audio_bytes / 8000 / len(codecs)
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "prompts": args.prompts, "codecs": codecs, "entries": len(entries),
        "mean_prompt_s": round(audio_s / args.prompts, 2),
        "audio_bytes": audio_bytes, "redis_used_memory_bytes": after - before,
        "redis_mb_per_1000_prompts": round(per_1000 / 1e6, 1),
        "overhead_vs_audio": round((after - before) / audio_bytes - 1, 4),
        "render_s": round(render_s, 1), "redis_version": info.get("redis_version", "?"),
        "allocator": info.get("mem_allocator", "?"),
    }
    table = md_table(["prompts", "codecs", "mean prompt", "audio stored", "Redis used_memory", "per 1,000 prompts",
                      "overhead"],
                     [[args.prompts, "+".join(codecs), f"{result['mean_prompt_s']} s", f"{audio_bytes / 1e6:.1f} MB",
                       f"{(after - before) / 1e6:.1f} MB", f"{result['redis_mb_per_1000_prompts']} MB",
                       f"{result['overhead_vs_audio'] * 100:.1f} %"]])
    md = md_report("Redis memory per 1,000 cached prompts",
                   f"python benchmarks/redis_sizing.py --prompts {args.prompts} --codecs {args.codecs}",
                   f"{result['date']}, commit {result['commit']}, redis {result['redis_version']}, "
                   f"{result['allocator']}", table,
                   "G.711 is 8,000 bytes a second per codec: a prompt of S seconds kept for both codecs takes about "
                   "16 kB x S in Redis.")
    write_result("redis_sizing", result, md)


if __name__ == "__main__":
    main()
