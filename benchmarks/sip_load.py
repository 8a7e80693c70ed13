"""SIP load: SIPp calls at rising rates against our server, and against SIPp's own UAS.

    python benchmarks/sip_load.py [--rates 25,50,100,150,200] [--seconds 8] [--hold-ms 1000]

Each call: INVITE → 200 → ACK, a short prompt plays for ``--hold-ms``, the caller
sends BYE (SIPp's uac_pcmu_bye.xml from sip_tests/peers). For each rate we report
calls attempted/successful/failed, INVITE→200 p50/p99 (SIPp's per-call response
time), SIPp's retransmission count, and the server's CPU % and RSS. The same
rates are then run against SIPp's reference UAS (uas_pcmu.xml): the ratio of
the two tells how close we are to what the generator itself sustains on this
machine. Table and JSON go to benchmarks/results/sip_load.{md,json}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(os.environ.get("PEERS_DIR", ROOT / "sip_tests" / "peers")).resolve()
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_ours(work: Path, port: int) -> subprocess.Popen:
    (work / "prompts.yaml").write_text('default: "Hello."\n')
    (work / "server.yaml").write_text(
        f"sip:\n  listen: 127.0.0.1:{port}\n  advertised_address: 127.0.0.1\n  tcp: false\n"
        "rtp:\n  port_min: 30000\n  port_max: 39999\nlimits:\n  max_calls: 5000\nprompts: prompts.yaml\n"
        "drain_timeout_s: 0\nhangup_after_prompt_ms: 5000\n")  # the caller hangs up first
    proc = subprocess.Popen([sys.executable, "-m", "sip_tts.cli", "serve", "--config", str(work / "server.yaml"),
                             "--log-level", "WARNING"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=open(work / "server.log", "w"), text=True)
    assert proc.stdout is not None and "ready" in proc.stdout.readline(), (work / "server.log").read_text()
    return proc


def start_reference(work: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(["sipp", "-sf", str(PEERS / "sipp" / "uas_pcmu.xml"), "-i", "127.0.0.1", "-p", str(port),
                             "-mi", "127.0.0.1", "-mp", str(free_port()), "-nostdin", "-aa"],
                            cwd=PEERS / "sipp", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc


def run_rate(target_port: int, rate: int, seconds: float, hold_ms: int, work: Path, pid: int | None) -> dict:
    calls = int(rate * seconds)
    run = work / f"rate{rate}"
    run.mkdir(exist_ok=True)
    cpu0 = proc_cpu_seconds(pid) if pid else 0.0
    t0 = time.monotonic()
    res = subprocess.run(
        ["sipp", f"127.0.0.1:{target_port}", "-sf", str(PEERS / "sipp" / "uac_pcmu_bye.xml"), "-s", "1000",
         "-i", "127.0.0.1", "-p", str(free_port()), "-mi", "127.0.0.1", "-mp", str(free_port()),
         "-m", str(calls), "-r", str(rate), "-l", str(max(50, rate * 4)), "-d", str(hold_ms), "-nostdin",
         "-recv_timeout", "10000", "-trace_stat", "-stf", str(run / "stats.csv"), "-trace_rtt", "-rtt_freq", "1"],
        cwd=run, capture_output=True, text=True, timeout=seconds * 4 + 60)
    wall = time.monotonic() - t0
    cpu = (proc_cpu_seconds(pid) - cpu0) if pid else None
    rows = (run / "stats.csv").read_text().strip().splitlines()
    head, last = rows[0].split(";"), rows[-1].split(";")
    stat = dict(zip(head, last))
    rtts: list[float] = []
    for f in run.glob("*_rtt.csv"):
        with open(f) as fh:
            for row in csv.reader(fh, delimiter=";"):
                if len(row) >= 2 and row[1].replace(".", "", 1).isdigit():
                    rtts.append(float(row[1]))
    rtts.sort()

    def pct(q: float) -> float | None:
        return rtts[min(len(rtts) - 1, int(q * len(rtts)))] if rtts else None

    return dict(rate=rate, calls=calls, rc=res.returncode, successful=int(stat.get("SuccessfulCall(C)", 0)),
                failed=int(stat.get("FailedCall(C)", 0)), retransmissions=int(stat.get("Retransmissions(C)", 0)),
                invite_200_p50_ms=pct(0.50), invite_200_p99_ms=pct(0.99), wall_s=wall,
                server_cpu_percent=(100 * cpu / wall) if cpu is not None else None,
                server_rss_mb=proc_rss_mb(pid) if pid else None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="25,50,100,150,200")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--hold-ms", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    rates = [int(r) for r in a.rates.split(",")]
    result: dict = dict(machine=f"{os.cpu_count()} cores", date=time.strftime("%Y-%m-%d"), hold_ms=a.hold_ms,
                        seconds=a.seconds, ours=[], reference=[])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        ours = start_ours(work, port)
        (work / "ours").mkdir()
        try:
            for rate in rates:
                r = run_rate(port, rate, a.seconds, a.hold_ms, work / "ours", ours.pid)
                result["ours"].append(r)
                print(f"ours      {rate:4d} cps: {r['successful']}/{r['calls']} ok, {r['failed']} failed, "
                      f"p50 {r['invite_200_p50_ms']} ms p99 {r['invite_200_p99_ms']} ms, "
                      f"retrans {r['retransmissions']}, cpu {r['server_cpu_percent']:.0f}%, rss {r['server_rss_mb']:.0f} MB",
                      flush=True)
        finally:
            ours.send_signal(signal.SIGTERM)
            ours.wait(20)
        ref_port = free_port()
        ref = start_reference(work, ref_port)
        try:
            (work / "ref").mkdir()
            for rate in rates:
                r = run_rate(ref_port, rate, a.seconds, a.hold_ms, work / "ref", ref.pid)
                result["reference"].append(r)
                print(f"sipp UAS  {rate:4d} cps: {r['successful']}/{r['calls']} ok, {r['failed']} failed, "
                      f"p50 {r['invite_200_p50_ms']} ms p99 {r['invite_200_p99_ms']} ms", flush=True)
        finally:
            ref.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            ref.send_signal(signal.SIGTERM)
            ref.wait(10)

    def sustained(runs: list[dict]) -> int:
        ok = [r["rate"] for r in runs if r["failed"] == 0 and r["successful"] == r["calls"]]
        return max(ok) if ok else 0

    result["ours_sustained_cps"] = sustained(result["ours"])
    result["reference_sustained_cps"] = sustained(result["reference"])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sip_load.json").write_text(json.dumps(result, indent=1))
    md = [f"# SIP load ({result['machine']}, {result['date']}, calls held {a.hold_ms} ms)", "",
          "`python benchmarks/sip_load.py` — SIPp uac_pcmu_bye.xml at each rate for "
          f"{a.seconds:.0f} s; reference: SIPp's uas_pcmu.xml in the same run.", "",
          "| cps | ours ok/failed | ours INVITE→200 p50/p99 ms | retrans | server CPU % | RSS MB | SIPp UAS ok/failed | SIPp UAS p50/p99 ms |",
          "|---|---|---|---|---|---|---|---|"]
    for o, r in zip(result["ours"], result["reference"]):
        md.append(f"| {o['rate']} | {o['successful']}/{o['failed']} | {o['invite_200_p50_ms']}/{o['invite_200_p99_ms']} | "
                  f"{o['retransmissions']} | {o['server_cpu_percent']:.0f} | {o['server_rss_mb']:.0f} | "
                  f"{r['successful']}/{r['failed']} | {r['invite_200_p50_ms']}/{r['invite_200_p99_ms']} |")
    md += ["", f"Sustained with 0 failures: ours {result['ours_sustained_cps']} cps, "
               f"SIPp UAS {result['reference_sustained_cps']} cps."]
    (out / "sip_load.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
