"""The server's media plane while a GPU-like engine delivers audio in bursts, on any CPU.

    python benchmarks/burst_load.py [--calls 128] [--listen-s 4]

Why: on the H100, 128 calls hearing live synthesis got RTP packets 20-40 ms late in a
few global moments, and cached prompts did not (engine_notes.md). This reproduces the
delivery pattern without a GPU, to tell the server's handling of chunks apart from
whatever the real engine's host does: a stand-in engine (``BurstEngine`` below, a
load generator, not a model) releases each call's audio as the GPU engine does —
windows of 10, 15, 25, 50 then 75 tokens (0.4 to 3 s of 24 kHz audio), each ready
before the previous one has played, released together on a 60 ms clock, up to 32 at a
time. The server (``sip-tts serve``, this engine injected) takes N calls from the same
loopback callers as benchmarks/e2e_load.py; a cached prompt is the same-run reference.
Gaps: RTP packets more than 30 ms after the previous one, by the kernel's receive time.

Writes benchmarks/results/burst_load.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

WINDOWS = [10, 15, 25, 50, 75]
SAMPLES_PER_TOKEN = 960  # 24 kHz, 25 tokens per second


from engine.base import EngineBase  # noqa: E402


class BurstEngine(EngineBase):
    """Releases sine audio in GPU-engine-shaped windows, in bursts on a shared clock."""

    name = "burst"
    sample_rate = 24000

    def __init__(self, tick: float = 0.06, tokens: int = 150, first_s: float = 0.3, batch: int = 32) -> None:
        from engine.base import EngineStats

        self.tick, self.tokens, self.first_s, self.batch = tick, tokens, first_s, batch
        self.stats = EngineStats()
        self._due: list[tuple[float, asyncio.Queue, int, bool]] = []
        self._task: asyncio.Task | None = None
        t = np.arange(WINDOWS[-1] * SAMPLES_PER_TOKEN) / self.sample_rate
        self._audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)  # made once: no work on the loop

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._clock())

    def queue_depth(self) -> int:
        return 0

    async def _clock(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick)
            now = loop.time()
            ready = sorted((d for d in self._due if d[0] <= now), key=lambda d: d[0])
            self._due = [d for d in self._due if d[0] > now] + ready[self.batch:]
            for _, q, n, last in ready[:self.batch]:
                q.put_nowait(self._audio[:n].copy())
                if last:
                    q.put_nowait(None)

    async def stream(self, text: str, voice: object, background: bool = False):
        await self.start()
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        done, at, k = 0, loop.time() + self.first_s, 0
        while done < self.tokens:
            n = min(WINDOWS[min(k, len(WINDOWS) - 1)], self.tokens - done)
            done += n
            self._due.append((at, q, n * SAMPLES_PER_TOKEN, done >= self.tokens))
            at += 0.6 * n / 25
            k += 1
        while True:
            item = await q.get()
            if item is None:
                return
            yield item

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


def serve_with_burst_engine(argv: list[str]) -> int:
    """``sip-tts serve`` with the stand-in engine in place of the configured one."""
    import sip_tts.app as app
    import sip_tts.cli as cli
    from engine.base import VoiceSpec

    app.build_engine = lambda cfg: (BurstEngine(), VoiceSpec())
    return cli.main(argv)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=128)
    ap.add_argument("--listen-s", type=float, default=4.0)
    ap.add_argument("--spread-s", type=float, default=1.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--serve", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve is not None:
        return serve_with_burst_engine(a.serve)
    from e2e_load import load

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "prompts.yaml").write_text(
            'routes:\n'
            '  - number: "2000"\n'
            '    say: "Your order {headers[X-Order]} is confirmed."\n'
            '  - number: "1000"\n'
            '    say: "Your appointment is confirmed."\n')
        (work / "server.yaml").write_text(
            f"sip:\n  listen: 127.0.0.1:{port}\n  advertised_address: 127.0.0.1\n  tcp: false\n"
            "rtp:\n  port_min: 30000\n  port_max: 39999\nengine:\n  kind: espeak\n"
            f"limits:\n  max_calls: {a.calls * 2}\nprompts: prompts.yaml\ndrain_timeout_s: 0\n"
            "hangup_after_prompt_ms: 10000\n")
        proc = subprocess.Popen([sys.executable, __file__, "--serve", "serve", "--config", str(work / "server.yaml"),
                                 "--log-level", "WARNING"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=open(work / "server.log", "w"), text=True, env=dict(os.environ))
        line = proc.stdout.readline() if proc.stdout else ""
        if "ready" not in line:
            proc.kill()
            raise SystemExit(f"server did not start: {line!r}\n{(work / 'server.log').read_text()[-3000:]}")
        try:
            for number, prompt in (("2000", "live, bursts"), ("1000", "cached")):
                row = asyncio.run(load(port, a.calls, a.listen_s, a.spread_s, number))
                row["prompt"] = prompt
                rows.append(row)
                print(f"  {prompt:13s} N={a.calls}: ok {row['ok']}, first audio p50/p95 "
                      f"{row['first_audio_ms']['p50']:.0f}/{row['first_audio_ms']['p95']:.0f} ms, gaps (kernel) "
                      f"{row['gaps_kernel']} of {row['packets']} packets {row['gap_kinds']}", flush=True)
        finally:
            proc.terminate()
            proc.wait(20)
    result = dict(date=dt.date.today().isoformat(), cpus=os.cpu_count(), calls=a.calls, rows=rows)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "burst_load.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Media plane under GPU-shaped audio bursts ({result['date']}, {result['cpus']} CPUs, "
             f"{a.calls} calls)", "", "Command: `python benchmarks/burst_load.py`. Gaps by kernel receive time.", "",
             "| prompt | ok | first audible p50 / p95 ms | gaps > 30 ms / packets | lost / skipped / late |",
             "|---|---|---|---|---|"]
    for r in rows:
        k = r["gap_kinds"]
        lines.append(f"| {r['prompt']} | {r['ok']} | {r['first_audio_ms']['p50']:.0f} / {r['first_audio_ms']['p95']:.0f} | "
                     f"{r['gaps_kernel']} / {r['packets']} | {k['lost']} / {k['skipped']} / {k['late']} |")
    (out / "burst_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
