"""Voice-agent path: text pushed on a call's WebSocket -> the first audible RTP packet at the caller.

    python benchmarks/agent_latency.py                      # espeak, here (CPU): N = 1, 32, 128
    python benchmarks/agent_latency.py --engine chatterbox  # GPU: a random full-size checkpoint
    python benchmarks/agent_latency.py --compare .old17 --stream-calls 0  # before/after, one run

``--compare DIR``: a second server from another source tree (a clean export of an earlier
commit: ``git archive <sha> | tar -x -C DIR``), running beside this tree's; each level's callers
dial both and the rounds alternate between them, so both sides share the host's load and the
engine's warm state (the table's rows say ``after``: this tree, ``before``: DIR).

``sip-tts serve`` with a route whose calls wait for an application (``steps: [live]``). For each
N, N callers on loopback (SIP on a UDP socket, RTP received with the kernel's timestamps) dial it
and an application per call opens ``/v1/calls/{id}/stream``. Each round, every application pushes
a short reply at once (``{"text": ..., "flush": true}``) and waits for ``idle``. Measured per
utterance: the moment the text was sent (wall clock) -> the caller's first audible packet (kernel
receive time, a 20 ms frame above -50 dBFS): the end-to-end latency; and the server's own
``speaking`` event: its latency (message in -> first frame sent) and ``engine_ms`` (message in ->
the engine's first audio), so latency - engine = our overhead (the loop's turn, and the pacer's:
a talkspurt is sent when its audio is queued, at most a 2 ms sub-slot later, telephony/rtp/pacer.py;
before that change, the wait for the call's next 20 ms slot). End to end - engine: the same
overhead seen from the caller, with the WebSocket's delivery and the first frames that are not
yet audible.

Part 2, streaming: ``--stream-calls`` calls (128) whose applications each ask for the caller's
audio (pcm16_8k frames), while their callers send RTP, and stream text word by word (one word every
``--word-ms``) for ``--stream-s`` seconds. Counted at the callers: packets more than 30 ms after the
one before (kernel time; late / skipped slot / lost); at the server: late frames and pacer late
wake-ups; at the applications: caller frames received, and frames a slow client lost.

Writes benchmarks/results/agent_latency[_<engine>][_<tag>].{json,md} (host, load, commit, GPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.api_load import metric, stop_server  # noqa: E402
from benchmarks.e2e_load import _parse, _RtpReceiver, _Udp, pct  # noqa: E402
from benchmarks.hostload import HostLoad, gpu_name  # noqa: E402
from engine.audio import decode_g711  # noqa: E402
from telephony.rtp.packet import RtpPacket  # noqa: E402
from telephony.sip.message import Response  # noqa: E402
from tests.sipmsg import LOOPBACK, invite, offer, request  # noqa: E402

REPLIES = ["Sure, I can help with that.", "Your table is booked for eight.", "Let me check that for you.",
           "Thanks, that is all set."]
STORY = ("Here is what I found for you. The flight leaves at nine in the morning, and it lands just after noon. "
         "You have a window seat, and your bag is included. Shall I send the details by text message? ")
AUDIBLE = 10 ** (-50 / 20)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(work: Path, a: argparse.Namespace, tree: Path = ROOT,
                 rtp: tuple[int, int] = (30000, 39999)) -> tuple[subprocess.Popen, int, int]:
    """``sip-tts serve`` from ``tree`` with a live route, as much room as the largest level needs;
    ready once its /health answers 200."""
    import httpx
    import yaml

    sip_port, api_port = free_port(), free_port()
    n = max(max(a.levels), a.stream_calls)
    engine: dict = {"kind": "espeak", "process": a.espeak_process}
    if a.engine == "chatterbox":
        engine = {"kind": "chatterbox", "model_dir": a.model_dir, "device": a.device, "max_streams": n,
                  "max_tokens": a.max_tokens}
    config = {"sip": {"listen": f"127.0.0.1:{sip_port}", "advertised_address": "127.0.0.1", "tcp": False},
              "rtp": {"port_min": rtp[0], "port_max": rtp[1]}, "engine": engine, "limits": {"max_calls": 2 * n + 10},
              "prompts": "prompts.yaml", "drain_timeout_s": 0,
              "api": {"listen": f"127.0.0.1:{api_port}", "max_call_streams_per_key": 2 * n + 10}}
    (work / "prompts.yaml").write_text(yaml.safe_dump({"routes": [{"number": "5000", "steps": ["live"]}]}))
    (work / "server.yaml").write_text(yaml.safe_dump(config))
    log = work / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "sip_tts.cli", "serve", "--config", str(work / "server.yaml"),
                             "--log-level", "WARNING", "--log-format", "json"], cwd=tree, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"))
    deadline = time.monotonic() + 600  # (Chatterbox: loading, graphs, start-up checks)
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=2).status_code == 200:
                return proc, sip_port, api_port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start\n{log.read_text()[-3000:]}")


class Call:
    """One caller (SIP + kernel-stamped RTP) and its application (the WebSocket)."""

    def __init__(self, sip_port: int, api_port: int) -> None:
        self.sip_port, self.api_port = sip_port, api_port
        self.call_id = uuid.uuid4().hex
        self.loud: list[float] = []  # kernel times of audible packets
        self.heard: list[tuple[float, int, int]] = []  # (kernel time, seq, ts) of every packet while listening
        self.listening = False
        self.events: asyncio.Queue[dict] = asyncio.Queue()
        self.frames = 0
        self.frame_gaps = 0
        self._last_frame: int | None = None

    async def dial(self) -> None:
        loop = asyncio.get_running_loop()
        self.sip_t, self.sip = await loop.create_datagram_endpoint(_Udp, local_addr=(LOOPBACK, 0))
        self.rtp = _RtpReceiver(loop)
        self.local = self.sip_t.get_extra_info("sockname")[1]
        self.sip_t.sendto(invite(call_id=self.call_id, sdp=offer(LOOPBACK, self.rtp.port), host=LOOPBACK,
                                 via_host=f"{LOOPBACK}:{self.local}", user="5000"), (LOOPBACK, self.sip_port))
        while True:
            _, data = await asyncio.wait_for(self.sip.queue.get(), 30)
            msg = _parse(data)
            if isinstance(msg, Response) and msg.cseq[1] == "INVITE" and msg.status >= 200:
                break
        if msg.status != 200:
            raise RuntimeError(f"INVITE got {msg.status}")
        self.tag = (msg.headers.get("To") or "").split("tag=")[1]
        self.remote_rtp = int(msg.body.decode().split("m=audio ")[1].split()[0])
        self.sip_t.sendto(request("ACK", self.call_id, cseq=1, to_tag=self.tag, via_host=f"{LOOPBACK}:{self.local}"),
                          (LOOPBACK, self.sip_port))
        self._rtp_task = asyncio.ensure_future(self._read_rtp())

    async def _read_rtp(self) -> None:
        while True:
            _, kernel, pkt = await self.rtp.queue.get()
            if len(pkt) < 172:
                continue
            if self.listening:
                self.heard.append((kernel, int.from_bytes(pkt[2:4], "big"), int.from_bytes(pkt[4:8], "big")))
            pcm = decode_g711(pkt[12:], "PCMU").astype(np.float64) / 32768
            if np.sqrt(np.mean(pcm ** 2)) > AUDIBLE:
                self.loud.append(kernel)

    async def attach(self, audio: str | None = None) -> None:
        import websockets

        self.ws = await websockets.connect(f"ws://127.0.0.1:{self.api_port}/v1/calls/{self.call_id}/stream",
                                           max_queue=None, ping_interval=None)
        self._ws_task = asyncio.ensure_future(self._read_ws())
        await self.event("start")
        if audio:
            await self.ws.send(json.dumps({"audio": audio}))

    async def _read_ws(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for msg in self.ws:
                if isinstance(msg, bytes):
                    number = int.from_bytes(msg[2:4], "big")
                    if self._last_frame is not None and (number - self._last_frame) & 0xFFFF != 1:
                        self.frame_gaps += 1
                    self._last_frame = number
                    self.frames += 1
                else:
                    self.events.put_nowait(json.loads(msg))
        except ConnectionClosed:
            pass

    async def event(self, kind: str, timeout: float = 60) -> dict:
        while True:
            ev = await asyncio.wait_for(self.events.get(), timeout)
            if ev["event"] == kind:
                return ev

    async def say(self, text: str) -> dict:
        """Push ``text``; the latency to the first audible packet after it, and the server's figures."""
        sent = time.time()
        await self.ws.send(json.dumps({"text": text, "flush": True}))
        speaking = await self.event("speaking")
        await self.event("idle")
        heard = next((t for t in self.loud if t >= sent), None)
        e2e = (heard - sent) * 1e3 if heard else float("nan")
        engine = speaking["engine_ms"]
        return {"e2e_ms": e2e, "server_ms": speaking["latency_ms"], "engine_ms": engine,
                "e2e_minus_engine_ms": e2e - engine if engine is not None else float("nan")}

    async def _bye_answered(self) -> None:
        while not (isinstance(msg := _parse((await self.sip.queue.get())[1]), Response) and msg.cseq[1] == "BYE"):
            pass

    async def hang_up(self) -> None:
        for task in (getattr(self, "_rtp_task", None), getattr(self, "_ws_task", None)):
            if task is not None:
                task.cancel()
        if hasattr(self, "tag"):  # (our BYE first: the server then has no BYE of its own to send)
            self.sip_t.sendto(request("BYE", self.call_id, cseq=2, to_tag=self.tag, via_host=f"{LOOPBACK}:{self.local}"),
                              (LOOPBACK, self.sip_port))
            try:
                await asyncio.wait_for(self._bye_answered(), 3)
            except asyncio.TimeoutError:
                pass
        if hasattr(self, "ws"):
            await self.ws.close()
        if hasattr(self, "sip_t"):
            self.sip_t.close()
            self.rtp.close()


async def _open(sip_port: int, api_port: int, n: int, audio: str | None = None) -> list[Call]:
    calls = [Call(sip_port, api_port) for _ in range(n)]
    for i in range(0, n, 16):  # INVITEs in bursts of 16: the setup is not what is measured
        await asyncio.gather(*(c.dial() for c in calls[i:i + 16]))
    await asyncio.gather(*(c.attach(audio) for c in calls))
    return calls


async def latency_level(servers: list[tuple[int, int]], n: int, rounds: int) -> list[dict]:
    """One row per server: ``n`` calls on each, the rounds alternating between the servers."""
    groups: list[list[Call]] = []
    results: list[list[dict]] = [[] for _ in servers]
    try:
        for sip_port, api_port in servers:
            groups.append(await _open(sip_port, api_port, n))
        for calls in groups:
            await calls[0].say("Warm up.")
        for r in range(rounds):
            for k, calls in enumerate(groups):
                results[k] += await asyncio.gather(*(c.say(REPLIES[(r + i) % len(REPLIES)])
                                                     for i, c in enumerate(calls)))
                await asyncio.sleep(0.3)
    finally:
        await asyncio.gather(*(c.hang_up() for calls in groups for c in calls), return_exceptions=True)
    return [_row(n, res) for res in results]


def _row(n: int, results: list[dict]) -> dict:
    row: dict = {"calls": n, "utterances": len(results)}
    for key in ("e2e_ms", "server_ms", "engine_ms", "e2e_minus_engine_ms"):
        vals = [x[key] for x in results if x[key] is not None and not np.isnan(x[key])]
        row[key] = {"p50": pct(vals, 50), "p95": pct(vals, 95), "max": max(vals) if vals else float("nan")}
    over = [x["server_ms"] - x["engine_ms"] for x in results if x["engine_ms"] is not None]
    row["overhead_ms"] = {"p50": pct(over, 50), "p95": pct(over, 95), "max": max(over) if over else float("nan")}
    row["missing"] = sum(1 for x in results if np.isnan(x["e2e_ms"]))
    return row


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children (the engine's process), from /proc."""
    total = 0.0
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(c) for c in (task / "children").read_text().split()]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


async def stream_level(sip_port: int, api_port: int, n: int, seconds: float, word_ms: float, url: str,
                       server_pid: int) -> dict:
    import resource

    before = {k: metric(url, k) for k in ("sip_tts_late_frames_total", "sip_tts_pacer_late_wakeups_total")}
    calls = await _open(sip_port, api_port, n, audio="pcm16_8k")
    stop = asyncio.Event()
    sent = 0

    async def talk() -> None:  # every caller sends 20 ms RTP packets, on one clock
        nonlocal sent
        loop = asyncio.get_running_loop()
        socks = [(c.rtp.sock, c.remote_rtp) for c in calls]
        tick, seq = loop.time(), 0
        payload = bytes(np.random.default_rng(0).integers(0x70, 0x7F, 160, dtype=np.uint8))
        while not stop.is_set():
            for i, (sock, port) in enumerate(socks):
                try:
                    sock.sendto(RtpPacket(0, seq & 0xFFFF, seq * 160, 1000 + i, payload).serialize(), (LOOPBACK, port))
                    sent += 1
                except BlockingIOError:
                    pass
            seq += 1
            tick += 0.020
            await asyncio.sleep(max(0.0, tick - loop.time()))

    async def write(c: Call, offset: int) -> None:
        words = STORY.split(" ")
        await asyncio.sleep(offset * word_ms / 1000 / max(n, 1))
        i = offset
        while not stop.is_set():
            w = words[i % len(words)]
            await c.ws.send(json.dumps({"text": w + " ", "flush": w.endswith("?")}))
            i += 1
            await asyncio.sleep(word_ms / 1000)

    for c in calls:
        c.listening = True
    tasks = [asyncio.ensure_future(talk())] + [asyncio.ensure_future(write(c, i)) for i, c in enumerate(calls)]
    cpu0, ours0, t0 = cpu_seconds(server_pid), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, ours1, wall = cpu_seconds(server_pid), resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - t0
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in calls:
        c.listening = False
    frames = sum(c.frames for c in calls)
    frame_gaps = sum(c.frame_gaps for c in calls)
    kinds = {"lost": 0, "skipped": 0, "late": 0}
    packets = 0
    for c in calls:
        heard = [h for h in c.heard if c.loud and h[0] >= c.loud[0]]
        packets += len(heard)
        for (t0, s0, ts0), (t1, s1, ts1) in zip(heard, heard[1:]):
            if t1 - t0 > 0.030:
                kinds["lost" if (s1 - s0) & 0xFFFF != 1 else "skipped" if (ts1 - ts0) & 0xFFFFFFFF != 160
                      else "late"] += 1
    await asyncio.gather(*(c.hang_up() for c in calls), return_exceptions=True)
    after = {k: metric(url, k) for k in before}
    return {"calls": n, "seconds": seconds, "word_ms": word_ms, "packets": packets,
            "gaps_over_30ms": sum(kinds.values()), "gap_kinds": kinds,
            "server_late_frames": after["sip_tts_late_frames_total"] - before["sip_tts_late_frames_total"],
            "server_pacer_late_wakeups": after["sip_tts_pacer_late_wakeups_total"]
            - before["sip_tts_pacer_late_wakeups_total"],
            "caller_packets_sent": sent, "caller_frames_received": frames, "caller_frame_gaps": frame_gaps,
            "server_cpu_percent": round(100 * (cpu1 - cpu0) / wall, 1),
            "benchmark_cpu_percent": round(100 * (ours1.ru_utime + ours1.ru_stime - ours0.ru_utime - ours0.ru_stime)
                                           / wall, 1)}


def render(report: dict) -> str:
    lines = [f"# Voice-agent latency ({report['engine']})", "",
             f"{report['date']}, {report['host_name']}" + (f", GPU {report['gpu']}" if report.get("gpu") else ", no GPU")
             + f"; `{report['command']}`", "", HostLoad.describe(report["host"]), "",
             "## Text pushed on the WebSocket -> first audible RTP packet at the caller", "",
             "Every call's application pushes a short reply at once, each round (worst case: all together). "
             "End to end: the test sent the text (wall clock) -> the caller's kernel received the first audible "
             "packet. Server: message in -> first frame sent (its `speaking` event); engine: message in -> the "
             "engine's first audio; overhead = server - engine (the loop's turn and the pacer's: a talkspurt goes "
             "out when its audio is queued, at most a 2 ms sub-slot later; before, the wait for the next 20 ms slot); "
             "end to end - engine per utterance (WebSocket delivery and not yet audible frames included).", "",
             "| calls | tree | utterances | end to end p50 / p95 ms | server p50 / p95 ms | engine first audio p50 / p95 ms"
             " | overhead p50 / p95 ms | end to end - engine p50 / p95 ms | no audio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["latency"]:
        f = lambda k: f"{r[k]['p50']:.1f} / {r[k]['p95']:.1f}" if k in r else "-"  # noqa: E731
        lines.append(f"| {r['calls']} | {r.get('tree', 'this')} | {r['utterances']} | {f('e2e_ms')} | {f('server_ms')} | "
                     f"{f('engine_ms')} | {f('overhead_ms')} | {f('e2e_minus_engine_ms')} | {r['missing']} |")
    if report.get("compare"):
        lines += ["", f"Trees: after = this tree ({report.get('commit')}), before = `{report['compare']}`; "
                      "each level's rounds alternate between the two servers (same host, same engine warm-up)."]
    s = report.get("stream")
    if s:
        k = s["gap_kinds"]
        lines += ["", f"## {s['calls']} calls streaming text word by word ({s['word_ms']:.0f} ms a word) and receiving "
                      f"their callers' audio (pcm16_8k), {s['seconds']:.0f} s", "",
                  "| RTP packets at callers | gaps > 30 ms (late / skipped / lost) | server late frames | "
                  "pacer late wake-ups | caller packets sent | frames the applications got | frame-number gaps | "
                  "CPU: server (engine included) / this benchmark, % of a core |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {s['packets']} | {s['gaps_over_30ms']} ({k['late']} / {k['skipped']} / {k['lost']}) | "
                  f"{s['server_late_frames']:.0f} | {s['server_pacer_late_wakeups']:.0f} | {s['caller_packets_sent']} | "
                  f"{s['caller_frames_received']} | {s['caller_frame_gaps']} | {s.get('server_cpu_percent')} / "
                  f"{s.get('benchmark_cpu_percent')} |"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", choices=["espeak", "chatterbox"], default="espeak")
    ap.add_argument("--calls", default="1,32,128", help="concurrent calls per latency level")
    ap.add_argument("--rounds", type=int, default=3, help="utterances per call per level")
    ap.add_argument("--min-utterances", type=int, default=0,
                    help="more rounds where a level has few calls (a p95 at 1 call wants dozens of utterances)")
    ap.add_argument("--stream-calls", type=int, default=128, help="part 2 (0: skip it)")
    ap.add_argument("--stream-s", type=float, default=20.0)
    ap.add_argument("--word-ms", type=float, default=100.0, help="part 2: one word this often per call")
    ap.add_argument("--espeak-process", action="store_true", help="espeak in its own process (resampling there too)")
    ap.add_argument("--tag", default="", help="appended to the result files' names (e.g. the host: h200)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--compare", default="", help="a second server from this source tree (before), rounds alternated")
    chatterbox = ap.add_argument_group("chatterbox (a random checkpoint, written on first use)")
    chatterbox.add_argument("--model-dir", default="/tmp/chatterbox-random")
    chatterbox.add_argument("--device", default="cuda")
    chatterbox.add_argument("--max-tokens", type=int, default=75, help="speech tokens per utterance (3 s)")
    chatterbox.add_argument("--tiny", action="store_true", help="a 2-layer, 128-wide T3: a CPU check of the script")
    a = ap.parse_args()
    a.levels = [int(x) for x in a.calls.split(",")]
    if a.engine == "chatterbox":
        from engine.chatterbox.random_checkpoint import benchmark_checkpoint

        benchmark_checkpoint(a.model_dir, *((2, 128) if a.tiny else (24, 1024)))
    host = HostLoad()
    report: dict = {"engine": a.engine, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "host_name": f"{platform.node()} ({os.cpu_count()} CPUs)",
                    "command": " ".join(["python"] + sys.argv), "args": vars(a), "latency": []}
    report["gpu"] = gpu_name()
    report["commit"] = os.environ.get("COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip() or None
    report["compare"] = a.compare or None
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "after").mkdir()
        proc, sip_port, api_port = start_server(Path(tmp) / "after", a)
        servers, sides, other = [(sip_port, api_port)], [None], None
        url = f"http://127.0.0.1:{api_port}"
        try:
            if a.compare:
                (Path(tmp) / "before").mkdir()
                other, o_sip, o_api = start_server(Path(tmp) / "before", a, Path(a.compare).resolve(), (40000, 49999))
                servers, sides = servers + [(o_sip, o_api)], ["after", "before"]
            for n in a.levels:
                rounds = max(a.rounds, -(-a.min_utterances // n))
                for side, row in zip(sides, asyncio.run(latency_level(servers, n, rounds))):
                    if side:
                        row["tree"] = side
                    report["latency"].append(row)
                    print(f"N={n}{' ' + side if side else ''}: end to end p50/p95 {row['e2e_ms']['p50']:.1f}/"
                          f"{row['e2e_ms']['p95']:.1f} ms, server {row['server_ms']['p50']:.1f}/"
                          f"{row['server_ms']['p95']:.1f}, engine {row['engine_ms']['p50']:.1f}/"
                          f"{row['engine_ms']['p95']:.1f}, overhead {row['overhead_ms']['p50']:.1f}/"
                          f"{row['overhead_ms']['p95']:.1f} ms", flush=True)
                time.sleep(1.0)
            if a.stream_calls:
                s = report["stream"] = asyncio.run(stream_level(sip_port, api_port, a.stream_calls, a.stream_s,
                                                                a.word_ms, url, proc.pid))
                print(f"stream {s['calls']} calls: gaps {s['gaps_over_30ms']} {s['gap_kinds']} of {s['packets']} "
                      f"packets, server late frames {s['server_late_frames']:.0f}, frames {s['caller_frames_received']}"
                      f" of {s['caller_packets_sent']} sent", flush=True)
        finally:
            stop_server(proc)
            if other is not None:
                stop_server(other)
    report["host"] = host.finish()
    name = "agent_latency" + (f"_{a.engine}" if a.engine != "espeak" else "") + (f"_{a.tag}" if a.tag else "")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(report, indent=1, default=str) + "\n"), (".md", render(report))):
        (Path(a.out) / (name + suffix)).write_text(text)
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
