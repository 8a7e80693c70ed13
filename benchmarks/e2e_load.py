"""End to end on the GPU: the server with the Chatterbox engine, N concurrent calls on loopback.

    python benchmarks/e2e_load.py [--model-dir DIR] [--calls 1,32,128] [--listen-s 4]

Starts ``sip-tts serve`` with ``engine: chatterbox`` (random weights in the real
architecture unless --model-dir; speech then lasts ``--max-tokens`` tokens because
random weights never stop). The prompt names an order number from a SIP header, so
every call's speech is synthesised live (a last row calls a fixed prompt instead,
served from the prompt cache). For each N it starts N callers at once (spread over
``--spread-s``): each sends an INVITE with a loopback SDP offer, ACKs the 200, and
listens to its RTP for ``--listen-s`` seconds after the first audible packet, then
hangs up. Measured per call: INVITE → 200, INVITE → first RTP packet, INVITE →
first audible packet (a 20 ms G.711 frame above -50 dBFS), and packets that
arrived more than 30 ms after the one before (gaps, while listening; counted
both on the client loop's clock and on the kernel's receive timestamps).

Adds an "e2e" section to benchmarks/results/engine.json and re-renders engine.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.audio import decode_g711  # noqa: E402
from telephony.sip.message import (  # noqa: E402
    Request as SipRequest, Response, SipParseError, parse_message, response_for,
)
from tests.sipmsg import LOOPBACK, invite, offer, request  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _parse(data: bytes):
    """A SIP message, or None (another call's RTCP can land here: RTP port + 1 may be our SIP port)."""
    try:
        return parse_message(data)
    except SipParseError:
        return None


class _RtpReceiver:
    """A loopback UDP socket whose datagrams carry the kernel's receive time (SO_TIMESTAMPNS) as
    well as the loop's: gaps in kernel time are the sender's (or the network's), not this
    client's event loop catching up."""

    SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, self.SO_TIMESTAMPNS, 1)
        self.sock.bind((LOOPBACK, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.queue: asyncio.Queue[tuple[float, float, bytes]] = asyncio.Queue()
        self.loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(2048, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError):
                return
            kernel = float("nan")
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == self.SO_TIMESTAMPNS and len(raw) >= 16:
                    sec, nsec = struct.unpack("qq", raw[:16])
                    kernel = sec + nsec / 1e9
            self.queue.put_nowait((time.perf_counter(), kernel, data))

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class Heard:
    """The RTP a caller received: each packet's loop and kernel arrival time, sequence number and timestamp."""

    AUDIBLE = 10 ** (-50 / 20)  # a 20 ms G.711 frame above -50 dBFS is audible

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.kernel: list[float] = []
        self.seqs: list[int] = []
        self.stamps: list[int] = []
        self.audible_at: float | None = None

    def take(self, t: float, kt: float, pkt: bytes) -> bool:
        """One packet (a runt is passed over); True if it is the first audible one."""
        if len(pkt) < 12:
            return False
        self.arrivals.append(t)
        self.kernel.append(kt)
        self.seqs.append(int.from_bytes(pkt[2:4], "big"))
        self.stamps.append(int.from_bytes(pkt[4:8], "big"))
        if self.audible_at is not None:
            return False
        pcm = decode_g711(pkt[12:], "PCMU").astype(np.float64) / 32768
        if np.sqrt(np.mean(pcm ** 2)) > self.AUDIBLE:
            self.audible_at = t
            return True
        return False

    async def listen(self, queue: asyncio.Queue, listen_s: float, limit_s: float,
                     stopped_s: float | None = None) -> bool:
        """Take packets from ``queue`` until ``listen_s`` after the first audible one (at most ``limit_s``);
        with ``stopped_s``, False if none came for that long once they flowed (the media stopped early)."""
        deadline = time.perf_counter() + limit_s
        while time.perf_counter() < deadline:
            wait = deadline - time.perf_counter()
            if stopped_s is not None and self.arrivals:
                wait = min(wait, stopped_s)
            try:
                t, kt, pkt = await asyncio.wait_for(queue.get(), max(0.01, wait))
            except asyncio.TimeoutError:
                return not (stopped_s is not None and self.arrivals and time.perf_counter() < deadline - 0.01)
            if self.take(t, kt, pkt):
                deadline = t + listen_s
        return True

    def first_audio(self, out: dict, t0: float) -> str | None:
        """``first_rtp_ms`` and ``first_audio_ms`` (since ``t0``) into ``out``; else what was missing."""
        if not self.arrivals:
            return "no RTP"
        out["first_rtp_ms"] = (self.arrivals[0] - t0) * 1e3
        if self.audible_at is None:
            return "no audible RTP"
        out["first_audio_ms"] = (self.audible_at - t0) * 1e3
        return None

    def gaps(self, first: int) -> tuple[list[float], list[float], dict[str, int]]:
        """Kernel-time gaps over 30 ms from packet ``first`` on: their sizes, when each began, and what
        each was: a lost packet (sequence jump), a slot the sender skipped (timestamp jump), or a
        packet sent late (neither)."""
        kinds = {"lost": 0, "skipped": 0, "late": 0}
        sizes, at = [], []
        for i in range(first + 1, len(self.arrivals)):
            d = self.kernel[i] - self.kernel[i - 1]
            if d > 0.030:
                sizes.append(d)
                at.append(self.kernel[i - 1])
                if (self.seqs[i] - self.seqs[i - 1]) & 0xFFFF != 1:
                    kinds["lost"] += 1
                elif (self.stamps[i] - self.stamps[i - 1]) & 0xFFFFFFFF != 160:
                    kinds["skipped"] += 1
                else:
                    kinds["late"] += 1
        return sizes, at, kinds


class _Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.queue.put_nowait((time.perf_counter(), data))


async def one_call(server_port: int, listen_s: float, delay: float, number: str = "2000") -> dict:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(delay)
    sip_t, sip = await loop.create_datagram_endpoint(_Udp, local_addr=(LOOPBACK, 0))
    rtp = _RtpReceiver(loop)
    call_id = uuid.uuid4().hex
    sip_port = sip_t.get_extra_info("sockname")[1]
    out: dict = {}
    try:
        t0 = time.perf_counter()
        sip_t.sendto(invite(call_id=call_id, sdp=offer(LOOPBACK, rtp.port),
                            host=LOOPBACK, via_host=f"{LOOPBACK}:{sip_port}", user=number,
                            extra=f"X-Order: {int(delay * 1e6) % 100000}\r\n"), (LOOPBACK, server_port))
        while True:
            t, data = await asyncio.wait_for(sip.queue.get(), 30)
            msg = _parse(data)
            if isinstance(msg, Response) and msg.cseq[1] == "INVITE" and msg.status >= 200:
                break
        if msg.status != 200:
            return dict(error=f"INVITE got {msg.status}")
        out["invite_200_ms"] = (t - t0) * 1e3
        tag = (msg.headers.get("To") or "").split("tag=")[1]
        sip_t.sendto(request("ACK", call_id, cseq=1, to_tag=tag, via_host=f"{LOOPBACK}:{sip_port}"),
                     (LOOPBACK, server_port))
        rx = Heard()
        await rx.listen(rtp.queue, listen_s, 60)
        if missing := rx.first_audio(out, t0):
            return dict(out, error=missing)
        arrivals, audible_at = rx.arrivals, rx.audible_at
        heard = [a for a in arrivals if a >= audible_at]
        out["gaps"] = int(sum(1 for a, b in zip(heard, heard[1:]) if b - a > 0.030))
        sizes, at, kinds = rx.gaps(next(i for i, a in enumerate(arrivals) if a >= audible_at))
        if at:
            out["gap_at"] = at
        out["gaps_kernel"] = len(sizes)
        out["gap_kinds"] = kinds
        out["gap_sizes"] = sizes
        out["packets"] = len(heard)
        sip_t.sendto(request("BYE", call_id, cseq=2, to_tag=tag, via_host=f"{LOOPBACK}:{sip_port}"),
                     (LOOPBACK, server_port))
        end = time.perf_counter() + 5
        while time.perf_counter() < end:  # the 200 to our BYE (or the server's own BYE, answered)
            try:
                _, data = await asyncio.wait_for(sip.queue.get(), end - time.perf_counter())
            except asyncio.TimeoutError:
                break
            msg = _parse(data)
            if isinstance(msg, Response) and msg.cseq[1] == "BYE":
                break
            if isinstance(msg, SipRequest) and msg.method == "BYE":
                sip_t.sendto(response_for(msg, 200).serialize(), (LOOPBACK, server_port))
        return out
    except asyncio.TimeoutError:
        return dict(out, error="timeout")
    finally:
        sip_t.close()
        rtp.close()


def start_server(work: Path, port: int, model_dir: str, calls: int, max_tokens: int, device: str,
                 engine_process: bool = True, log_level: str = "WARNING", py_spy: str | None = None,
                 out: Path | None = None, api_port: int = 8080, engine_yaml: str = "") -> subprocess.Popen:
    # 2000: text that depends on the call (synthesised live for each call); 1000: a fixed prompt
    # (rendered once into the prompt cache at start-up, then sent from memory).
    (work / "prompts.yaml").write_text(
        'routes:\n'
        '  - number: "2000"\n'
        '    say: "Thank you for calling. Your order {headers[X-Order]} is confirmed for Tuesday at nine."\n'
        '  - number: "1000"\n'
        '    say: "Thank you for calling. Your appointment is confirmed for Tuesday at nine in the morning."\n')
    (work / "server.yaml").write_text(
        f"sip:\n  listen: {LOOPBACK}:{port}\n  advertised_address: {LOOPBACK}\n  tcp: false\n"
        "rtp:\n  port_min: 30000\n  port_max: 39999\n"
        f"engine:\n  kind: chatterbox\n  model_dir: {model_dir}\n  device: {device}\n"
        f"  max_streams: {max(calls, 1)}\n  max_tokens: {max_tokens}\n  process: {str(engine_process).lower()}\n"
        + "".join(f"  {item.strip()}\n" for item in engine_yaml.split(",") if item.strip()) +
        f"limits:\n  max_calls: {calls * 2}\nprompts: prompts.yaml\ndrain_timeout_s: 0\n"
        "hangup_after_prompt_ms: 10000\n"
        f"api:\n  listen: {LOOPBACK}:{api_port}\n")
    cmd = [sys.executable, "-m", "sip_tts.cli", "serve", "--config", str(work / "server.yaml"),
           "--log-level", log_level, "--log-format", "json"]
    if py_spy:  # the server's own stacks (every thread, idle included), sampled while the calls run
        tag = "process" if engine_process else "inline"
        cmd = [py_spy, "record", "--rate", "250", "--idle", "--threads", "--nonblocking", "--format", "raw",
               "-o", str((out or work) / f"e2e_server_pyspy_{tag}.txt"), "--"] + cmd
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=open(work / "server.log", "w"), text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    while (line.startswith("py-spy>") or line == "\n") and proc.stdout:  # its banner comes first
        line = proc.stdout.readline()
    if "ready" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}\n{(work / 'server.log').read_text()[-3000:]}")
    return proc


def stop_server(proc: subprocess.Popen, profiled: bool = False) -> None:
    """SIGTERM to the server; under py-spy, to its child (py-spy writes its samples when the server exits)."""
    target = proc.pid
    if profiled:
        for task in os.listdir(f"/proc/{proc.pid}/task"):
            children = open(f"/proc/{proc.pid}/task/{task}/children").read().split()
            if children:
                target = int(children[0])
                break
    try:
        os.kill(target, signal.SIGTERM)
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        proc.kill()


def engine_share(api_port: int) -> tuple[float, float]:
    """The server's ``sip_tts_call_engine_first_audio_seconds`` (sum, count): a caller's utterance asked
    of the engine to its first audio, measured inside the server."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from soak import scrape

    got, name = scrape(api_port), "sip_tts_call_engine_first_audio_seconds"
    return got.get(name + "_sum", 0.0), got.get(name + "_count", 0.0)


async def load(port: int, n: int, listen_s: float, spread: float, number: str = "2000", rounds: int = 1,
               api_port: int | None = None) -> dict:
    """``rounds`` x ``n`` calls at once (rounds one after another). With ``api_port``, the engine's
    share of the calls' first audio (mean, from the server's histogram) beside INVITE -> first audible."""
    t0 = time.perf_counter()
    before = engine_share(api_port) if api_port else None
    results: list[dict] = []
    for _ in range(rounds):
        results += await asyncio.gather(*(one_call(port, listen_s, spread * i / max(n, 1) + 1e-6 * i, number)
                                          for i in range(n)))
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    row = dict(calls=n, rounds=rounds, prompt="live" if number == "2000" else "cached", ok=len(ok),
               errors=errors[:5], wall_s=time.perf_counter() - t0)
    for key in ("invite_200_ms", "first_rtp_ms", "first_audio_ms"):
        vals = [r[key] for r in ok]
        row[key] = dict(p50=pct(vals, 50), p95=pct(vals, 95), max=max(vals) if vals else float("nan"),
                        mean=float(np.mean(vals)) if vals else float("nan"))
    if before is not None:
        after = engine_share(api_port)
        asked = after[1] - before[1]
        row["engine_first_audio_mean_ms"] = (after[0] - before[0]) / asked * 1e3 if asked else None
        row["engine_asked"] = int(asked)
        if asked:  # what the server adds to the engine's first audio: SIP, call set-up, pacing, the wire
            row["server_part_mean_ms"] = row["first_audio_ms"]["mean"] - row["engine_first_audio_mean_ms"]
    row["gaps"] = int(sum(r["gaps"] for r in ok))
    row["gaps_kernel"] = int(sum(r["gaps_kernel"] for r in ok))
    row["gap_kinds"] = {k: sum(r["gap_kinds"][k] for r in ok) for k in ("lost", "skipped", "late")}
    sizes = [x for r in ok for x in r["gap_sizes"]]
    # Are gaps shared (the sender stalled for everyone) or per call? Group gap starts within 10 ms.
    starts = sorted(x for r in ok for x in r.get("gap_at", []))
    clusters: list[int] = []
    for i, x in enumerate(starts):
        if i and x - starts[i - 1] < 0.010:
            clusters[-1] += 1
        else:
            clusters.append(1)
    row["gap_moments"] = {"moments": len(clusters), "max_calls": max(clusters, default=0),
                          "span_s": (starts[-1] - starts[0]) if starts else 0.0}
    row["gap_ms"] = {"p50": pct(sizes, 50) * 1e3, "p95": pct(sizes, 95) * 1e3, "max": max(sizes, default=0) * 1e3}
    row["packets"] = int(sum(r["packets"] for r in ok))
    return row


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="/tmp/chatterbox-random")
    ap.add_argument("--calls", default="1,32,128")
    ap.add_argument("--listen-s", type=float, default=4.0)
    ap.add_argument("--spread-s", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=150, help="speech tokens per prompt (random weights)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--server-log-level", default="WARNING", help="the server's log (kept in --out)")
    ap.add_argument("--py-spy", help="path to py-spy: sample the server's stacks into --out (raw flamegraph)")
    ap.add_argument("--engine-process", default="both", choices=["on", "off", "both"],
                    help="the engine in its own process (on), in the server's (off), or both in turn")
    ap.add_argument("--engine-yaml", default="",
                    help="more engine settings, comma-separated (a CPU run: 'startup_checks: false, dtype: float32')")
    ap.add_argument("--rounds-at-1", type=int, default=1,
                    help="calls one after another for the 1-call level (10: issue 22's engine + server split)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    from engine.chatterbox.random_checkpoint import benchmark_checkpoint
    benchmark_checkpoint(a.model_dir)
    counts = [int(x) for x in a.calls.split(",")]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        api_port = s.getsockname()[1]
    rows = []
    modes = {"on": [True], "off": [False], "both": [False, True]}[a.engine_process]
    for mode in modes:
        with tempfile.TemporaryDirectory() as tmp:
            Path(a.out).mkdir(parents=True, exist_ok=True)
            proc = start_server(Path(tmp), port, a.model_dir, max(counts), a.max_tokens, a.device, mode,
                                a.server_log_level, a.py_spy, Path(a.out), api_port, a.engine_yaml)
            try:
                asyncio.run(load(port, 1, 1.0, 0))  # warm-up
                for n, number in [(n, "2000") for n in counts] + [(max(counts), "1000")]:
                    row = asyncio.run(load(port, n, a.listen_s, a.spread_s if n > 1 else 0, number,
                                           a.rounds_at_1 if n == 1 else 1, api_port))
                    row["engine_process"] = mode
                    rows.append(row)
                    print(f"  e2e {row['prompt']} N={n:4d} engine {'own process' if mode else 'in server'}: "
                          f"ok {row['ok']}/{n * row['rounds']}, INVITE->200 p50 {row['invite_200_ms']['p50']:.1f} ms, "
                          f"first RTP p50/p95 {row['first_rtp_ms']['p50']:.0f}/{row['first_rtp_ms']['p95']:.0f} ms, "
                          f"first audio p50/p95 {row['first_audio_ms']['p50']:.0f}/{row['first_audio_ms']['p95']:.0f} ms, "
                          f"mean {row['first_audio_ms']['mean']:.1f} ms = engine {_ms(row.get('engine_first_audio_mean_ms'))}"
                          f" + server {_ms(row.get('server_part_mean_ms'))}, "
                          f"gaps {row['gaps']} (kernel-stamped {row['gaps_kernel']}: {row['gap_kinds']}, "
                          f"size p50/p95/max {row['gap_ms']['p50']:.0f}/{row['gap_ms']['p95']:.0f}/{row['gap_ms']['max']:.0f} ms) "
                          f"moments {row['gap_moments']}, of {row['packets']} packets, "
                          f"errors {row['errors']}", flush=True)
                    time.sleep(1.0)
            finally:
                stop_server(proc, profiled=bool(a.py_spy))
                Path(a.out).mkdir(parents=True, exist_ok=True)
                (Path(a.out) / f"e2e_server_{'process' if mode else 'inline'}.log").write_text(
                    (Path(tmp) / "server.log").read_text())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "engine.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result["e2e"] = dict(rows=rows, max_tokens=a.max_tokens, listen_s=a.listen_s,
                         method="server subprocess, engine chatterbox, callers on loopback UDP (benchmarks/e2e_load.py)")
    path.write_text(json.dumps(result, indent=1))
    if "ours" in result:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from engine_bench import render_md
        (out / "engine.md").write_text(render_md(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
