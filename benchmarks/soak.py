"""Soak: a bounded run at a steady fraction of capacity, watching for leaks and drift.

    python benchmarks/soak.py [--minutes 10] [--concurrent 400] [--capacity 500]

The server (embedded espeak engine, metrics on) takes SIPp calls (uac_pcmu_bye.xml:
INVITE, ACK, hold ``--hold-ms``, BYE) at the rate that keeps ``--concurrent`` calls
up — by default 80% of ``--capacity`` (the calls one instance is sized for, README
"Capacity planning"). Every ``--sample-s`` seconds: the server's RSS, open file
descriptors, calls active, and its counters (calls by outcome, late and silence frames)
from /metrics. At the end: failed calls (SIPp), late frames, and whether RSS and file
descriptors stayed flat (second half's growth within 5% / 16 descriptors of its start).

Writes benchmarks/results/soak.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from sip_load import PEERS, free_port, proc_cpu_seconds, proc_rss_mb  # noqa: E402


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def start_server(work: Path, port: int, mport: int, capacity: int) -> subprocess.Popen:
    (work / "prompts.yaml").write_text('default: "Thank you for calling. This is a soak test of the media '
                                       'server. Goodbye."\n')
    (work / "server.yaml").write_text(
        f"sip:\n  listen: 127.0.0.1:{port}\n  advertised_address: 127.0.0.1\n  tcp: false\n"
        "rtp:\n  port_min: 30000\n  port_max: 39999\n"
        f"limits:\n  max_calls: {capacity}\nprompts: prompts.yaml\ndrain_timeout_s: 5\n"
        f"hangup_after_prompt_ms: 10000\nmetrics:\n  listen: 127.0.0.1:{mport}\n")
    proc = subprocess.Popen([sys.executable, "-m", "sip_tts.cli", "serve", "--config", str(work / "server.yaml"),
                             "--log-level", "WARNING", "--log-format", "json"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=open(work / "server.log", "w"), text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if "ready" not in line:
        raise SystemExit(f"server did not start: {(work / 'server.log').read_text()[-2000:]}")
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--capacity", type=int, default=500, help="calls one instance is sized for")
    ap.add_argument("--load", type=float, default=0.8, help="fraction of capacity kept up")
    ap.add_argument("--hold-ms", type=int, default=4000, help="how long each caller stays")
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    concurrent = max(1, int(a.capacity * a.load))
    rate = max(1.0, concurrent / (a.hold_ms / 1000 + 0.2))  # Little's law: calls up = rate x time per call
    seconds = a.minutes * 60
    samples: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port, mport = free_port(), free_port()
        srv = start_server(work, port, mport, a.capacity)
        sipp = subprocess.Popen(
            ["sipp", f"127.0.0.1:{port}", "-sf", str(PEERS / "sipp" / "uac_pcmu_bye.xml"), "-s", "1000",
             "-i", "127.0.0.1", "-p", str(free_port()), "-mi", "127.0.0.1", "-mp", str(free_port()),
             "-r", f"{rate:.2f}", "-l", str(concurrent), "-d", str(a.hold_ms), "-m", str(int(rate * seconds)),
             "-nostdin", "-recv_timeout", "15000", "-trace_stat", "-stf", str(work / "stats.csv"), "-fd", "5"],
            cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        cpu0 = proc_cpu_seconds(srv.pid)
        try:
            while sipp.poll() is None and time.monotonic() - t0 < seconds + 60:
                time.sleep(a.sample_s)
                m = scrape(mport)
                now = time.monotonic() - t0
                cpu1 = proc_cpu_seconds(srv.pid)
                samples.append(dict(t_s=round(now, 1), rss_mb=round(proc_rss_mb(srv.pid), 1), fds=fds(srv.pid),
                                    active=m.get("sip_tts_calls_active", 0),
                                    ended=sum(v for k, v in m.items() if k.startswith("sip_tts_calls_total")),
                                    late_frames=m.get("sip_tts_late_frames_total", 0),
                                    silence_frames=m.get("sip_tts_silence_frames_total", 0),
                                    cpu_percent=round(100 * (cpu1 - cpu0) / a.sample_s, 1)))
                cpu0 = cpu1
                print(json.dumps(samples[-1]), flush=True)
        finally:
            if sipp.poll() is None:
                sipp.send_signal(signal.SIGUSR1)  # SIPp: stop placing calls, finish the current ones
                try:
                    sipp.wait(30)
                except subprocess.TimeoutExpired:
                    sipp.kill()
            srv.send_signal(signal.SIGTERM)
            srv.wait(30)
        warnings = [line for line in (work / "server.log").read_text().splitlines()
                    if '"level": "warning"' in line or '"level": "error"' in line]
        rows = (work / "stats.csv").read_text().strip().splitlines()
        stat = dict(zip(rows[0].split(";"), rows[-1].split(";")))
    loaded = [x for x in samples if x["t_s"] <= seconds] or samples  # while calls were being placed
    half = loaded[len(loaded) // 2:]
    rss_growth = (half[-1]["rss_mb"] - half[0]["rss_mb"]) / max(half[0]["rss_mb"], 1e-9) if half else 0.0
    fd_growth = half[-1]["fds"] - half[0]["fds"] if half else 0
    result = dict(
        machine=f"{os.cpu_count()} cores", date=time.strftime("%Y-%m-%d"), minutes=a.minutes, capacity=a.capacity,
        concurrent_target=concurrent, rate_cps=round(rate, 2), hold_ms=a.hold_ms,
        successful=int(stat.get("SuccessfulCall(C)", 0)), failed=int(stat.get("FailedCall(C)", 0)),
        late_frames=samples[-1]["late_frames"] if samples else None, samples=samples,
        rss_growth_second_half=round(rss_growth, 4), fd_growth_second_half=fd_growth,
        rss_flat=abs(rss_growth) <= 0.05, fds_flat=abs(fd_growth) <= 16, server_warnings=warnings[:50])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    md = [f"# Soak ({result['machine']}, {result['date']}, {a.minutes:g} min)", "",
          f"`python benchmarks/soak.py --minutes {a.minutes:g} --capacity {a.capacity}`: {concurrent} calls kept up "
          f"({a.load:.0%} of {a.capacity}), {rate:.1f} calls/s, each held {a.hold_ms} ms, embedded engine.", "",
          f"Calls: {result['successful']} successful, **{result['failed']} failed**; late frames: "
          f"**{result['late_frames']:.0f}**; RSS growth over the second half: {rss_growth:+.1%} "
          f"({'flat' if result['rss_flat'] else 'NOT flat'}); file descriptors: {fd_growth:+d} "
          f"({'flat' if result['fds_flat'] else 'NOT flat'}).", "",
          "| t s | RSS MB | fds | calls active | calls ended | late frames | silence frames | server CPU % |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {s['t_s']} | {s['rss_mb']} | {s['fds']} | {s['active']:.0f} | {s['ended']:.0f} | "
           f"{s['late_frames']:.0f} | {s['silence_frames']:.0f} | {s['cpu_percent']} |" for s in samples]
    (out / "soak.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:5]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
