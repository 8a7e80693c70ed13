"""HTTP API under load: time to first audio byte next to the engine's own first audio, and phone calls
with and without API streams beside them.

    python benchmarks/api_load.py                          # espeak, here (CPU): N = 1, 8, 32
    python benchmarks/api_load.py --engine chatterbox      # GPU: N = 1, 32, 128, a random full-size checkpoint

Part 1, TTFB: ``sip-tts serve`` with the HTTP API; N clients at once each POST a streaming
``/v1/audio/speech`` (pcm) and read it to the end, ``--rounds`` times. Per request: the client's time
to the first audio byte of the body (TTFB), and the server's ``X-First-Audio-Ms`` header: from the
handler handing the utterance to the engine (its wait for an engine slot included, ``X-Queue-Ms``)
to the engine's first chunk. The API's overhead is TTFB minus that (HTTP, validation, encoding,
the loop; target <= 5 ms p95).

Part 2, calls first: ``--calls`` live SIP calls (benchmarks/e2e_load.py's caller: INVITE, ACK, RTP
received with kernel timestamps, listen ``--listen-s`` after the first audible packet, BYE); their
prompt depends on a SIP header, so every call's speech is synthesized live while the API streams run.
Once alone, once with ``--api-streams`` clients streaming /v1/audio/speech back to back for the whole
run. Packets more than 30 ms after the one before are counted and classed (late: sent late; skipped:
the pacer skipped a slot; lost); the server's own counters (late frames, pacer late wake-ups) too.

Both parts run with the API on the server's event loop and on its own thread (``api.own_thread``):
the decision between the two is taken from these numbers (README "HTTP API").

    python benchmarks/api_load.py --engine burst --modes loop --compare REV   # any CPU, before/after

``--engine burst``: benchmarks/burst_engine.py, which releases the first audio of all streams in one
tick as a batched GPU engine does (espeak serves one utterance at a time and cannot show what N
first chunks at once cost). TTFB is also taken from kernel receive times (the server's part without
the load generator's), and the server's event-loop CPU per request is reported (host-load
independent). ``--compare REV``: REV's server (a git worktree) beside this tree's, the rounds of
each level alternating between them.

Writes benchmarks/results/api_load[_<engine>].{json,md} (host, date, commit, GPU if any).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.e2e_load import load as call_load, stop_server  # noqa: E402
from benchmarks.hostload import gpu_name  # noqa: E402

FIXED_PROMPTS = 4  # prompts.yaml's texts without fields ("1000", default), each in PCMU and PCMA
TEXT = "Thank you for calling. Your appointment is confirmed for Tuesday at nine in the morning."


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def start_server(work: Path, a: argparse.Namespace, own_thread: bool, root: Path = ROOT
                 ) -> tuple[subprocess.Popen, int, int]:
    """``sip-tts serve`` from the checkout ``root`` (this one, or ``--compare``'s) with the API on."""
    sip_port, api_port = free_port(), free_port()
    (work / "prompts.yaml").write_text(
        'routes:\n  - number: "2000"\n'
        '    say: "Thank you for calling. Your order {headers[X-Order]} is confirmed for Tuesday at nine."\n'
        '  - number: "1000"\n'
        '    say: "Thank you for calling. Your appointment is confirmed for Tuesday at nine in the morning."\n'
        'default: "Hello."\n')
    if a.engine == "chatterbox":
        engine = (f"engine:\n  kind: chatterbox\n  model_dir: {a.model_dir}\n  device: {a.device}\n"
                  f"  max_streams: {a.max_streams}\n  max_tokens: {a.max_tokens}\n"
                  + (f"  watermark: {'false' if a.no_watermark else 'true'}\n"  # trees before it: none
                     if "watermark" in (root / "engine" / "chatterbox" / "settings.py").read_text() else ""))
    elif a.engine == "burst":
        engine = f"engine:\n  kind: burst\n  max_streams: {a.max_streams}\n"
    else:
        engine = "engine:\n  kind: espeak\n"
    (work / "server.yaml").write_text(
        f"sip:\n  listen: 127.0.0.1:{sip_port}\n  advertised_address: 127.0.0.1\n  tcp: false\n"
        f"rtp:\n  port_min: 30000\n  port_max: 39999\n{engine}"
        f"limits:\n  max_calls: {a.calls * 2 + 10}\nprompts: prompts.yaml\ndrain_timeout_s: 0\n"
        f"hangup_after_prompt_ms: 10000\n"
        f"api:\n  listen: 127.0.0.1:{api_port}\n  max_concurrent: {max(a.levels) + a.api_streams}\n"
        f"  own_thread: {str(own_thread).lower()}\n")
    # the burst engine is not in the product's registry: its launcher adds it and runs sip-tts
    cli = ["benchmarks/burst_engine.py"] if a.engine == "burst" else ["-m", "sip_tts.cli"]
    pre = []
    if a.py_spy:  # the server's stacks (every thread), sampled for the whole run
        pre = [a.py_spy, "record", "--rate", "500", "--threads", "--nonblocking", "--format", "raw",
               "-o", str(Path(a.out) / f"api_load_server_pyspy_{work.name}.txt"), "--"]
    proc = subprocess.Popen([*pre, sys.executable, *cli, "serve", "--config", str(work / "server.yaml"),
                             "--log-level", "WARNING", "--log-format", "json"], cwd=root, stdout=subprocess.PIPE,
                            stderr=open(work / "server.log", "w"), text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    while (line.startswith("py-spy>") or line == "\n") and proc.stdout:
        line = proc.stdout.readline()
    if "ready" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}\n{(work / 'server.log').read_text()[-3000:]}")
    return proc, sip_port, api_port


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


async def _recv(sock: socket.socket) -> tuple[bytes, float]:
    """What the socket has, and the kernel's receive time (CLOCK_REALTIME) of the last segment in it."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data, anc, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(16))
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
            try:
                await ready
            finally:
                loop.remove_reader(sock.fileno())
            continue
        stamp = float("nan")
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                sec, ns = struct.unpack("qq", raw[:16])
                stamp = sec + ns * 1e-9
        return data, stamp


async def one_stream(url: str, text: str, timeout_s: float = 120.0) -> dict:
    """``stream`` (below), given up after ``timeout_s``: an error row, not a hung benchmark."""
    try:
        return await asyncio.wait_for(stream(url, text), timeout_s)
    except asyncio.TimeoutError:
        return {"error": "timeout"}


async def stream(url: str, text: str) -> dict:
    """One streaming request on a fresh connection, read to its end (a small HTTP/1.1 client on a raw
    socket: httpx costs milliseconds of Python per request and chunk).

    Two times to the first audio byte of the body: ``ttfb_ms`` from before connecting to when this
    client's loop reads it (what a client sees; with N streams in one client process, the client's own
    work on the others is in it), and ``ttfb_kernel_ms`` from the request's last byte handed to the
    kernel to the kernel's receipt of the first audio (SO_TIMESTAMPNS): the server's part alone."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}).encode()
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await loop.sock_connect(sock, (host, int(port)))
        await loop.sock_sendall(sock, f"POST /v1/audio/speech HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                                      f"application/json\r\nContent-Length: {len(body)}\r\nConnection: close"
                                      f"\r\n\r\n".encode() + body)
        sent = time.time()
        buf = b""
        while b"\r\n\r\n" not in buf:
            data, stamp = await _recv(sock)
            if not data:
                return {"error": "closed"}
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if status != 200:
            return {"error": status}
        first = first_kernel = None
        if rest:
            first, first_kernel = time.perf_counter(), stamp
        n = len(rest)
        while True:
            data, stamp = await _recv(sock)
            if not data:
                break
            if first is None:
                first, first_kernel = time.perf_counter(), stamp
            n += len(data)  # (chunk framing included: a few bytes per piece)
        return {"ttfb_ms": (first - t0) * 1e3 if first else float("nan"), "total_ms": (time.perf_counter() - t0) * 1e3,
                "ttfb_kernel_ms": (first_kernel - sent) * 1e3 if first_kernel else float("nan"),
                "engine_first_ms": float(headers["x-first-audio-ms"]), "queue_ms": float(headers["x-queue-ms"]),
                "engine_arrived_ms": float(headers.get("x-first-audio-arrived-ms", "nan")),  # (trees before it: nan)
                "audio_s": n / 2 / 24000}
    finally:
        sock.close()


async def ttfb_round(url: str, n: int) -> list[dict]:
    """N streaming requests at once (after one to warm the connection path up)."""
    await one_stream(url, "Warm up.")
    return list(await asyncio.gather(*(one_stream(url, TEXT) for _ in range(n))))


def loop_cpu_s(pid: int) -> float:
    """CPU time of a process's main thread (the server's event loop), from the scheduler's own count."""
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return float("nan")


def summarize(n: int, results: list[dict]) -> dict:
    ok = [r for r in results if "error" not in r]
    row: dict = {"streams": n, "requests": len(results), "ok": len(ok),
                 "errors": [r["error"] for r in results if "error" in r][:5]}
    overhead = [r["ttfb_ms"] - r["engine_first_ms"] for r in ok]
    overhead_kernel = [r["ttfb_kernel_ms"] - r["engine_first_ms"] for r in ok]
    # from the first audio's arrival in the server process: the loop's hand-on of a batch's chunks counted too
    overhead_arrived = [r["ttfb_kernel_ms"] - r.get("engine_arrived_ms", float("nan")) for r in ok]
    overhead_arrived = [] if any(np.isnan(overhead_arrived)) else overhead_arrived
    for key, vals in (("ttfb_ms", [r["ttfb_ms"] for r in ok]), ("engine_first_ms", [r["engine_first_ms"] for r in ok]),
                      ("queue_ms", [r["queue_ms"] for r in ok]), ("overhead_ms", overhead),
                      ("ttfb_kernel_ms", [r["ttfb_kernel_ms"] for r in ok]), ("overhead_kernel_ms", overhead_kernel),
                      ("overhead_arrived_kernel_ms", overhead_arrived),
                      ("total_ms", [r["total_ms"] for r in ok])):
        row[key] = {"p50": pct(vals, 50), "p95": pct(vals, 95), "max": max(vals) if vals else float("nan")}
    # each round's p95, their median: on a shared host one round slowed by another process's burst moves the
    # pooled p95 (it is 5 % of the requests) but not this
    by_round: dict[int, list[float]] = {}
    for r in ok:
        by_round.setdefault(r.get("round", 0), []).append(r["ttfb_kernel_ms"] - r["engine_first_ms"])
    row["overhead_kernel_ms"]["p95_round_median"] = float(np.median([pct(v, 95) for v in by_round.values()])) \
        if by_round else float("nan")
    row["audio_s_per_request"] = pct([r["audio_s"] for r in ok], 50)
    return row


def metric(url: str, name: str) -> float:
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    return float(next((line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")), "nan"))


async def calls_with_streams(sip_port: int, url: str, a: argparse.Namespace, streams: int) -> dict:
    stop = asyncio.Event()
    served: list[dict] = []

    async def streamer() -> None:
        while not stop.is_set():
            served.append(await one_stream(url, TEXT))

    before = {k: metric(url, k) for k in ("sip_tts_late_frames_total", "sip_tts_pacer_late_wakeups_total")}
    tasks = [asyncio.ensure_future(streamer()) for _ in range(streams)]
    if streams:
        await asyncio.sleep(1.0)  # the streams are running before the first call arrives
    row = await call_load(sip_port, a.calls, a.listen_s, a.spread_s, "2000" if a.prompt == "live" else "1000")
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    after = {k: metric(url, k) for k in before}
    ok = [r for r in served if "error" not in r]
    return {"api_streams": streams, "calls": a.calls, "calls_ok": row["ok"], "call_errors": row["errors"],
            "first_audio_ms": row["first_audio_ms"], "gaps_kernel": row["gaps_kernel"], "gap_kinds": row["gap_kinds"],
            "packets": row["packets"], "server_late_frames": after["sip_tts_late_frames_total"] -
            before["sip_tts_late_frames_total"], "server_pacer_late_wakeups": after["sip_tts_pacer_late_wakeups_total"]
            - before["sip_tts_pacer_late_wakeups_total"], "api_requests_done": len(ok),
            "api_audio_s": sum(r["audio_s"] for r in ok), "api_errors": [r["error"] for r in served if "error" in r][:5]}


def render(report: dict) -> str:
    lines = [f"# HTTP API load ({report['engine']})", "",
             f"{report['date']}, commit {report['commit']}, {report['host']}"
             + (f", GPU {report['gpu']}" if report.get("gpu") else ", no GPU")
             + f", load average at start / end {report['load_average_at_start'][0]:.1f} / "
             f"{report.get('load_average_at_end', [float('nan')])[0]:.1f}; `{report['command']}`", "",
             "## Time to first audio byte (streaming /v1/audio/speech, pcm)", "",
             "TTFB (client): before connecting to this client's loop reading the first audio byte (the load "
             "generator's own work on the other streams included). TTFB (kernel): the request's last byte in the "
             "kernel to the first audio byte's arrival in the kernel (SO_TIMESTAMPNS), the server's part alone. "
             "API overhead: each minus the engine's first audio of the same request (X-First-Audio-Ms: from the "
             "hand-over to the engine to the request's task getting its first chunk). From arrival: TTFB (kernel) "
             "minus the hand-over to that chunk's arrival in the server process (X-First-Audio-Arrived-Ms, engine in its "
             "own process), so the loop handing a batch's first chunks on one after another counts as overhead too. "
             "Per round, median: the API overhead (kernel)'s p95 in each round (N requests at once), the median of "
             "those (one round slowed by another process on a shared host moves the pooled p95, not this). "
             "Loop CPU: the server's event-loop thread's CPU time per request (its whole stream; independent of the "
             "host's load).", "",
             "| API on (server) | streams | requests | TTFB client p50 / p95 ms | TTFB kernel p50 / p95 ms | "
             "engine first audio p50 / p95 ms | of it waiting for a slot p50 / p95 | API overhead (client) p50 / "
             "p95 ms | API overhead (kernel) p50 / p95 ms | of it p95 per round, median | from arrival (kernel) p50 / "
             "p95 ms | loop CPU ms / request |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, rows in report["ttfb"].items():
        for r in rows:
            k = r.get("ttfb_kernel_ms", {"p50": float("nan"), "p95": float("nan")})
            ok = r.get("overhead_kernel_ms", {"p50": float("nan"), "p95": float("nan")})
            arr = r.get("overhead_arrived_kernel_ms", {"p50": float("nan"), "p95": float("nan")})
            lines.append(f"| {mode} | {r['streams']} | {r['ok']}/{r['requests']} | {r['ttfb_ms']['p50']:.1f} / "
                         f"{r['ttfb_ms']['p95']:.1f} | {k['p50']:.1f} / {k['p95']:.1f} | "
                         f"{r['engine_first_ms']['p50']:.1f} / "
                         f"{r['engine_first_ms']['p95']:.1f} | {r['queue_ms']['p50']:.1f} / {r['queue_ms']['p95']:.1f}"
                         f" | {r['overhead_ms']['p50']:.2f} / {r['overhead_ms']['p95']:.2f} | {ok['p50']:.2f} / "
                         f"{ok['p95']:.2f} | {ok.get('p95_round_median', float('nan')):.2f} | {arr['p50']:.2f} / {arr['p95']:.2f} | "
                         f"{r.get('loop_cpu_ms_per_request', float('nan')):.2f} |")
    lines += ["", f"## {report['args']['calls']} calls ({report['args']['prompt']} prompt), alone and beside API streams",
              "",
              "| API on | API streams | calls ok | call first audio p50 / p95 ms | RTP gaps > 30 ms (late / skipped"
              " / lost) | server late frames | pacer late wake-ups | API requests served (audio s) |",
              "|---|---|---|---|---|---|---|---|"]
    for mode, rows in report["calls"].items():
        for r in rows:
            k = r["gap_kinds"]
            lines.append(f"| {mode} | {r['api_streams']} | {r['calls_ok']}/{r['calls']} | "
                         f"{r['first_audio_ms']['p50']:.0f} / {r['first_audio_ms']['p95']:.0f} | {r['gaps_kernel']} "
                         f"({k['late']} / {k['skipped']} / {k['lost']}) | {r['server_late_frames']:.0f} | "
                         f"{r['server_pacer_late_wakeups']:.0f} | {r['api_requests_done']} ({r['api_audio_s']:.0f}) |")
    return "\n".join(lines) + "\n"


def checkout(rev: str, into: Path) -> Path:
    """A detached worktree of ``rev`` (``--compare``), with this tree's burst engine in it; ``rev`` may
    also be a directory holding an exported tree (the GPU machine's copy has no usable git history)."""
    if Path(rev).is_dir():
        shutil.copy(ROOT / "benchmarks" / "burst_engine.py", Path(rev) / "benchmarks" / "burst_engine.py")
        return Path(rev).resolve()
    subprocess.run(["git", "worktree", "add", "--detach", str(into), rev], cwd=ROOT, check=True,
                   capture_output=True)
    shutil.copy(ROOT / "benchmarks" / "burst_engine.py", into / "benchmarks" / "burst_engine.py")
    return into


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", choices=["espeak", "chatterbox", "burst"], default="espeak",
                    help="burst: benchmarks/burst_engine.py, a CPU stand-in for a batched GPU engine")
    ap.add_argument("--streams", help="concurrent API streams per level (espeak: 1,8,32; chatterbox, burst: 1,32,128)")
    ap.add_argument("--rounds", type=int, default=3, help="each level this many times")
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--api-streams", type=int, default=32, help="API streams beside the calls")
    ap.add_argument("--listen-s", type=float, default=4.0)
    ap.add_argument("--prompt", choices=["live", "cached"], default="live",
                    help="live: each call's text names a SIP header's value (synthesized while the API runs); "
                         "cached: a fixed prompt, rendered at start-up (the engine is the API's alone)")
    ap.add_argument("--spread-s", type=float, default=1.0, help="the calls' INVITEs spread over this long")
    ap.add_argument("--modes", default="loop,thread", help="loop: API on the server's loop; thread: its own")
    ap.add_argument("--compare", metavar="REV[,REV]", help="also run the server of commit REV (a git worktree), its "
                    "requests interleaved round by round with this tree's: before and after in the same run")
    ap.add_argument("--no-calls", action="store_true", help="the TTFB part only")
    ap.add_argument("--py-spy", metavar="PATH", help="run each server under this py-spy (samples into --out)")
    ap.add_argument("--model-dir", default="/tmp/chatterbox-random", help="chatterbox (random weights if empty)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-watermark", action="store_true", help="chatterbox: watermark off (its cost under load)")
    ap.add_argument("--max-tokens", type=int, default=150, help="chatterbox: speech tokens per utterance")
    ap.add_argument("--t3-layers", type=int, default=24, help="chatterbox random checkpoint (a CPU check: 2)")
    ap.add_argument("--t3-width", type=int, default=1024, help="chatterbox random checkpoint (a CPU check: 128)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--tag", default="", help="appended to the result files' names (e.g. the host: h200)")
    a = ap.parse_args()
    a.levels = [int(x) for x in (a.streams or ("1,8,32" if a.engine == "espeak" else "1,32,128")).split(",")]
    # Chatterbox's slots: enough for the largest level, and for the calls beside the API streams (the engine is
    # then saturated and the calls-first gate decides who waits)
    a.max_streams = min(512, max(max(a.levels), a.calls + a.api_streams))
    if a.engine == "chatterbox":
        from engine.chatterbox.random_checkpoint import benchmark_checkpoint

        benchmark_checkpoint(a.model_dir, a.t3_layers, a.t3_width)
    report: dict = {"engine": a.engine, "load_average_at_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "commit": os.environ.get("COMMIT") or subprocess.run(  # $COMMIT: the device's copy
                        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
                    "host": f"{platform.node()} ({os.cpu_count()} CPUs)", "command": " ".join(["python"] + sys.argv),
                    "args": {k: v for k, v in vars(a).items()}, "ttfb": {}, "calls": {}}
    report["gpu"] = gpu_name()
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"": ROOT}
        for rev in (a.compare.split(",") if a.compare else []):
            roots[f" @ {rev}"] = checkout(rev, Path(tmp) / f"at-{rev}")
        try:
            for mode in a.modes.split(","):
                run_mode(a, mode, roots, Path(tmp), report)
        finally:
            for suffix, root in roots.items():
                if suffix and not Path(suffix[3:]).is_dir():
                    subprocess.run(["git", "worktree", "remove", "--force", str(root)], cwd=ROOT, capture_output=True)
    report["load_average_at_end"] = os.getloadavg()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = ("api_load" if a.engine == "espeak" else f"api_load_{a.engine}") + ("_cached" if a.prompt == "cached" else "") + \
        (f"_{a.tag}" if a.tag else "")
    (out / f"{name}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / f"{name}.md").write_text(render(report))
    print(render(report))
    return 0


def run_mode(a: argparse.Namespace, mode: str, roots: dict[str, Path], tmp: Path, report: dict) -> None:
    """One mode (loop / thread): a server per checkout, all up at once; each level's rounds go to each
    server in turn (the host's load drifts alike for all), then the calls part per server."""
    servers: dict[str, tuple[subprocess.Popen, int, str]] = {}
    try:
        for suffix, root in roots.items():
            work = tmp / f"{mode}{suffix.replace(' ', '_').replace('/', '_')}"  # (REV may be a path)
            work.mkdir()
            proc, sip_port, api_port = start_server(work, a, own_thread=mode == "thread", root=root)
            servers[mode + suffix] = (proc, sip_port, f"http://127.0.0.1:{api_port}")
        # Every server's fixed prompts rendered (2 texts in PCMU and PCMA) before any level: the renders of the
        # last server started share the GPU with the first server's first burst otherwise (engine_notes.md,
        # run 49: +217 ms on the first burst of 32 of whichever tree came first, none in the engine alone)
        for label, (_, _, url) in servers.items():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                held = metric(url, "sip_tts_prompt_cache_prompts")
                if held != held or held >= FIXED_PROMPTS:  # (nan: a tree without the metric)
                    break
                time.sleep(0.2)
        for label in servers:
            report["ttfb"][label] = []
        for n in a.levels:
            per: dict[str, list[dict]] = {label: [] for label in servers}
            cpu = dict.fromkeys(servers, 0.0)
            for i in range(a.rounds):
                for label, (proc, _, url) in servers.items():
                    before = loop_cpu_s(proc.pid)
                    per[label] += [{**r, "round": i} for r in asyncio.run(ttfb_round(url, n))]
                    cpu[label] += loop_cpu_s(proc.pid) - before
            for label, results in per.items():
                r = summarize(n, results)
                # the loop's own work per request (its first byte, and the rest of its audio): unlike the times,
                # this does not depend on what else the host runs
                r["loop_cpu_ms_per_request"] = cpu[label] * 1e3 / (a.rounds * (n + 1))
                report["ttfb"][label].append(r)
                print(f"{label} N={n}: TTFB p50/p95 {r['ttfb_ms']['p50']:.1f}/{r['ttfb_ms']['p95']:.1f} ms, "
                      f"engine {r['engine_first_ms']['p50']:.1f}/{r['engine_first_ms']['p95']:.1f}, overhead "
                      f"{r['overhead_ms']['p50']:.2f}/{r['overhead_ms']['p95']:.2f} ms, kernel "
                      f"{r['overhead_kernel_ms']['p50']:.2f}/{r['overhead_kernel_ms']['p95']:.2f} ms (round p95s' median "
                      f"{r['overhead_kernel_ms']['p95_round_median']:.2f}), from arrival "
                      f"{r['overhead_arrived_kernel_ms']['p50']:.2f}/{r['overhead_arrived_kernel_ms']['p95']:.2f} ms, "
                      f"loop CPU "
                      f"{r['loop_cpu_ms_per_request']:.2f} ms/request", flush=True)
        if a.no_calls:
            return
        for label, (_, sip_port, url) in servers.items():
            runs = []
            for streams in (0, a.api_streams):
                runs.append(asyncio.run(calls_with_streams(sip_port, url, a, streams)))
                r = runs[-1]
                print(f"{label} {a.calls} calls + {streams} API streams: {r['calls_ok']} ok, gaps "
                      f"{r['gaps_kernel']} {r['gap_kinds']}, server late frames {r['server_late_frames']:.0f}, "
                      f"API requests {r['api_requests_done']}", flush=True)
            report["calls"][label] = runs
    finally:
        for proc, _, _ in servers.values():
            stop_server(proc, profiled=bool(a.py_spy))


if __name__ == "__main__":
    sys.exit(main())
