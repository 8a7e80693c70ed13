"""First audible RTP packet after the ACK, on the wire: a prompt from Redis, from local disk, from memory.

    python benchmarks/redis_first_packet.py [--prompts 10]

Why: the shared cache (README "Fleet") must not make a call wait; this puts the three
ways a fixed prompt can be found side by side in one run. A redis-server and the
instances are started here: A renders N short prompts into Redis; B (prompt warming
off, an empty disk cache) is called once per prompt (each a Redis hit); B restarted
on the same disk cache is called once per prompt (disk hits), then again (memory hits).
tcpdump timestamps the ACK and the first packet that is not silence. Run it inside a
network namespace (loopback only). Writes benchmarks/results/redis_first_packet.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sip_tests.conftest import Capture, _start_server, run_sipp  # noqa: E402
from sip_tests.pcap import read_udp  # noqa: E402
from sip_tests.test_redis_cache import Redis, free_tcp_port, server_yaml  # noqa: E402
from engine.shared_cache import unpack  # noqa: E402
from benchmarks.hostload import md_report, md_table, write_result  # noqa: E402

WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
MEDIA = 17700


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=10)
    args = ap.parse_args()
    n = min(args.prompts, len(WORDS))
    work = Path(tempfile.mkdtemp(prefix="redis-first-packet-"))
    routes = "".join(f'  "{100 + i}": "Prompt number {WORDS[i]}."\n' for i in range(n))
    prompts = f"routes:\n{routes}"
    disk = work / "disk"
    cold = prompts + f"cache:\n  warm: false\n  dir: {disk}\n"
    redis = Redis(work)
    servers = []
    cap = Capture(work / "cap.pcap", f"udp and (dst port {MEDIA} or udp[8:4] = 0x41434b20)")
    order: list[str] = []

    def start(name: str, text: str):
        d = work / name
        d.mkdir()
        srv = _start_server(d, server_yaml(redis.url, free_tcp_port()), text)
        servers.append(srv)
        return srv

    def calls(srv, label: str) -> None:
        for i in range(n):
            d = work / f"{label}-{i}"
            d.mkdir()
            res = run_sipp(srv.uri_host, "uac_pcmu_wait_bye.xml", str(100 + i), d, "-m", "1",
                           "-recv_timeout", "20000", media_port=MEDIA, timeout=60)
            if res.returncode != 0:
                raise SystemExit(f"call failed: {res.stdout[-1000:]}")
            order.append(label)

    try:
        a = start("a", prompts)  # warms: renders every prompt into Redis
        deadline = time.monotonic() + 60
        while redis.cmd("DBSIZE") != 2 * n and time.monotonic() < deadline:
            time.sleep(0.1)
        entries = [unpack(redis.cmd("GET", k)) for k in redis.cmd("KEYS", "*")]
        a.stop()
        b = start("b", cold)
        calls(b, "redis")
        b.stop()
        b2 = start("b2", cold)
        calls(b2, "disk")
        calls(b2, "memory")
        b2.stop()
        cap.stop()
    finally:
        for srv in servers:
            if srv.proc.poll() is None:
                srv.proc.kill()
        redis.stop()

    packets = read_udp(cap.path)
    acks = [p.time for p in packets if p.payload.startswith(b"ACK ")]
    assert len(acks) == len(order), (len(acks), len(order))
    # Prompts start with the engine's own silence (leading frames equal the idle silence), so the
    # time a prompt starts is its first audible packet minus that frame's place in the prompt
    # (all paths play the same frames: A's renders).
    frame_index = {}
    for e in entries:
        frames = [e[i:i + 160] for i in range(0, len(e), 160)]
        k = next(i for i, f in enumerate(frames) if f.strip(b"\xff\x7f"))
        frame_index[frames[k]] = k
    ms: dict[str, list[float]] = {"redis": [], "disk": [], "memory": []}
    for label, start_t, end_t in zip(order, acks, acks[1:] + [float("inf")]):
        first = next(p for p in packets if start_t <= p.time < end_t and p.dst[1] == MEDIA
                     and p.payload[12:].strip(b"\xff\x7f"))
        k = frame_index[first.payload[12:]]
        ms[label].append((first.time - k * 0.020 - start_t) * 1000)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
              "calls_per_path": n, "ms": {k: [round(x, 2) for x in v] for k, v in ms.items()},
              "summary": {k: {"p50": round(pct(v, 0.5), 2), "p95": round(pct(v, 0.95), 2), "max": round(max(v), 2)}
                          for k, v in ms.items()}}
    table = md_table(["prompt found in", "calls", "p50 ms", "p95 ms", "max ms"],
                     [[k, n, s["p50"], s["p95"], s["max"]] for k, s in result["summary"].items()])
    md = md_report("A prompt's first frame after the ACK: Redis hit, local disk, local memory",
                   f"python benchmarks/redis_first_packet.py --prompts {n}",
                   f"{result['date']}, commit {commit}; espeak, loopback, tcpdump times, one run", table,
                   "The pacer sends on a 20 ms clock, so any path lands on one of its next ticks; a Redis hit adds one "
                   "loopback GET (timeout_ms bounds it). Measured: the ACK to the prompt's first frame on the wire "
                   "(its first audible packet minus the frames of leading silence the engine put before it).")
    write_result("redis_first_packet", result, md)


if __name__ == "__main__":
    main()
