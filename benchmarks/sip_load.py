"""SIP load: SIPp calls at rising rates until a rate fails, against our server and against
SIPp's own UAS, in the same run.

    python benchmarks/sip_load.py [--start 100] [--factor 1.5] [--max-rate 4000] [--seconds 8] [--hold-ms 1000]
    python benchmarks/sip_load.py --rates 50,100,200        # fixed rates instead of the search

Each call: INVITE → 200 → ACK, a short prompt plays for ``--hold-ms``, the caller
sends BYE (SIPp's uac_pcmu_bye.xml from sip_tests/peers). Each side is driven from
``--start`` calls/s, times ``--factor`` per step, until a step fails (a failed call,
fewer successful calls than attempted, SIPp's error exit or a run that does not
finish): the ceiling is the last rate that passed, and the first failing rate is
reported with what failed. SIPp's UAS (uas_pcmu.xml) is the reference: it shows
what the generator itself sustains on this machine, which bounds what any
server can be measured at here.

INVITE→200 is taken from a capture of the signalling (tcpdump on lo, kernel
timestamps, microseconds): first INVITE of a Call-ID to its first 200, instead
of SIPp's response-time counters, which come in its timer's steps (4 ms seen).
We also report SIPp's retransmissions and the server's CPU % and RSS, and the
host's load over the run (the machine is shared: see the table's footer).
Table and JSON go to benchmarks/results/sip_load.{md,json}. Run it in its own
network namespace (the README's note) so no other loopback traffic interferes.
"""

from __future__ import annotations

import argparse
import json
import re
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.hostload import HostLoad, add_rate_search  # noqa: E402
from sip_tests.pcap import read_udp  # noqa: E402

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


_CALL_ID = re.compile(rb"^(?:Call-ID|i)[ \t]*:[ \t]*(\S+)", re.M | re.I)
_CSEQ = re.compile(rb"^CSeq[ \t]*:[ \t]*\d+[ \t]+INVITE", re.M | re.I)


def invite_to_200_ms(pcap: Path, port: int) -> list[float]:
    """Per call, ms from the first INVITE sent to ``port`` to the first 200 (to the INVITE) back."""
    sent: dict[bytes, float] = {}
    took: dict[bytes, float] = {}
    for p in read_udp(pcap):
        data = p.payload
        m = _CALL_ID.search(data)
        if m is None or not _CSEQ.search(data):
            continue
        call = m.group(1)
        if data.startswith(b"INVITE ") and p.dst[1] == port:
            sent.setdefault(call, p.time)
        elif data.startswith(b"SIP/2.0 200") and p.src[1] == port and call in sent and call not in took:
            took[call] = (p.time - sent[call]) * 1e3
    return sorted(took.values())


def start_capture(path: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-U", "-s", "2048", "-B", "16384", "-w", str(path),
                             f"udp port {port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "listening on" in line:
            return proc
        if proc.poll() is not None:
            break
    raise RuntimeError("tcpdump did not start (run as root, inside a network namespace)")


def run_rate(target_port: int, rate: int, seconds: float, hold_ms: int, work: Path, pid: int | None) -> dict:
    calls = int(rate * seconds)
    run = work / f"rate{rate}"
    run.mkdir(exist_ok=True)
    cpu0 = proc_cpu_seconds(pid) if pid else 0.0
    cap = start_capture(run / "sip.pcap", target_port)
    t0 = time.monotonic()
    try:
        res = subprocess.run(
            ["sipp", f"127.0.0.1:{target_port}", "-sf", str(PEERS / "sipp" / "uac_pcmu_bye.xml"), "-s", "1000",
             "-i", "127.0.0.1", "-p", str(free_port()), "-mi", "127.0.0.1", "-mp", str(free_port()),
             "-m", str(calls), "-r", str(rate), "-l", str(max(50, rate * 4)), "-d", str(hold_ms), "-nostdin",
             "-recv_timeout", "10000", "-trace_stat", "-stf", str(run / "stats.csv")],
            cwd=run, capture_output=True, text=True, timeout=seconds * 4 + 60)
        rc = res.returncode
    except subprocess.TimeoutExpired:
        rc = None  # did not finish: a failure
    wall = time.monotonic() - t0
    cap.send_signal(signal.SIGINT)
    cap.wait(30)
    cpu = (proc_cpu_seconds(pid) - cpu0) if pid else None
    stat: dict[str, str] = {}
    if (run / "stats.csv").exists():
        rows = (run / "stats.csv").read_text().strip().splitlines()
        stat = dict(zip(rows[0].split(";"), rows[-1].split(";")))
    rtts = invite_to_200_ms(run / "sip.pcap", target_port)
    (run / "sip.pcap").unlink()

    def pct(q: float) -> float | None:
        return round(rtts[min(len(rtts) - 1, int(q * len(rtts)))], 3) if rtts else None

    out = dict(rate=rate, calls=calls, rc=rc, successful=int(stat.get("SuccessfulCall(C)", 0)),
               failed=int(stat.get("FailedCall(C)", 0)), retransmissions=int(stat.get("Retransmissions(C)", 0)),
               answered=len(rtts), invite_200_p50_ms=pct(0.50), invite_200_p99_ms=pct(0.99),
               invite_200_max_ms=round(rtts[-1], 3) if rtts else None, wall_s=wall,
               server_cpu_percent=(100 * cpu / wall) if cpu is not None else None,
               server_rss_mb=proc_rss_mb(pid) if pid else None)
    out["passed"] = rc == 0 and out["failed"] == 0 and out["successful"] == calls
    return out


def search(port: int, rates: list[int] | None, a: argparse.Namespace, work: Path, pid: int | None, label: str) -> list[dict]:
    """Fixed ``rates``, or from ``a.start`` up by ``a.factor`` until one fails (the ceiling search)."""
    runs: list[dict] = []
    rate = a.start
    while True:
        if rates is not None:
            if len(runs) == len(rates):
                break
            rate = rates[len(runs)]
        r = run_rate(port, rate, a.seconds, a.hold_ms, work, pid)
        runs.append(r)
        cpu = f", cpu {r['server_cpu_percent']:.0f}%, rss {r['server_rss_mb']:.0f} MB" if pid else ""
        print(f"{label:9s} {rate:5d} cps: {'pass' if r['passed'] else 'FAIL'} {r['successful']}/{r['calls']} ok, "
              f"{r['failed']} failed, rc {r['rc']}, INVITE->200 p50 {r['invite_200_p50_ms']} p99 "
              f"{r['invite_200_p99_ms']} ms, retrans {r['retransmissions']}{cpu}", flush=True)
        if rates is None:
            if not r["passed"] or rate >= a.max_rate:
                break
            rate = min(a.max_rate, int(round(rate * a.factor)))
    return runs


def reference_runs(work: Path, rates: list[int] | None, a: argparse.Namespace) -> list[dict]:
    ref_port = free_port()
    ref = start_reference(work, ref_port)
    try:
        (work / "ref").mkdir()
        return search(ref_port, rates, a, work / "ref", ref.pid, "sipp UAS")
    finally:
        ref.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        ref.send_signal(signal.SIGTERM)
        ref.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_rate_search(ap, start=100, max_rate=4000, seconds=8.0)
    ap.add_argument("--hold-ms", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--tls", action="store_true", help="UDP (SIPp) and TLS (Python client) rows in one run "
                    "(sip_load_tls.md); default rates 200")
    ap.add_argument("--no-reference", action="store_true", help="skip SIPp's UAS (a second tree's run in a pair)")
    a = ap.parse_args()
    if a.tls:
        return tls_main(a)
    rates = [int(r) for r in a.rates.split(",")] if a.rates else None
    host = HostLoad()
    result: dict = dict(machine=f"{os.cpu_count()} cores", date=time.strftime("%Y-%m-%d"), hold_ms=a.hold_ms,
                        seconds=a.seconds, mode="fixed rates" if rates else f"ceiling search from {a.start} x{a.factor}",
                        invite_200_source="tcpdump on lo, kernel timestamps (us)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        ours = start_ours(work, port)
        (work / "ours").mkdir()
        try:
            result["ours"] = search(port, rates, a, work / "ours", ours.pid, "ours")
        finally:
            ours.send_signal(signal.SIGTERM)
            ours.wait(60)
        result["reference"] = [] if a.no_reference else reference_runs(work, rates, a)
    result["host"] = host.finish()

    def ceiling(runs: list[dict]) -> tuple[int, dict | None]:
        passed = [r["rate"] for r in runs if r["passed"]]
        failed = next((r for r in runs if not r["passed"]), None)
        return (max(passed) if passed else 0), failed

    for side in ("ours", "reference"):
        top, fail = ceiling(result[side])
        result[f"{side}_sustained_cps"] = top
        result[f"{side}_first_failing_cps"] = fail["rate"] if fail else None
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sip_load.json").write_text(json.dumps(result, indent=1))

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    def line(r: dict, server: bool) -> str:
        cpu = f"{r['server_cpu_percent']:.0f} | {r['server_rss_mb']:.0f} | " if server else ""
        return (f"{'pass' if r['passed'] else '**fail**'} | {r['successful']}/{r['calls']} ({r['failed']} failed) | "
                f"{ms(r['invite_200_p50_ms'])}/{ms(r['invite_200_p99_ms'])}/{ms(r['invite_200_max_ms'])} | "
                f"{r['retransmissions']} | {cpu}")
    md = [f"# SIP load ({result['machine']}, {result['date']}, calls held {a.hold_ms} ms, {a.seconds:.0f} s per rate)", "",
          "`python benchmarks/sip_load.py` (in its own network namespace): SIPp uac_pcmu_bye.xml at rising rates until "
          "one fails, against our server (embedded espeak engine, prompt cached) and, in the same run, against SIPp's "
          "uas_pcmu.xml. INVITE→200 from a tcpdump capture (kernel timestamps), per call.", "",
          "| side | cps | result | ok/attempted | INVITE→200 p50/p99/max ms | retrans | server CPU % | RSS MB |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| ours | {r['rate']} | {line(r, True)}" for r in result["ours"]]
    md += [f"| SIPp UAS | {r['rate']} | {line(r, False)} - | - |" for r in result["reference"]]
    md += ["", f"Ceiling (highest rate with every call successful): ours {result['ours_sustained_cps']} cps "
               f"(first failing: {result['ours_first_failing_cps'] or 'none up to --max-rate'}), SIPp UAS "
               f"{result['reference_sustained_cps']} cps (first failing: "
               f"{result['reference_first_failing_cps'] or 'none up to --max-rate'}). The load generator (SIPp's UAC) "
               "runs on the same cores, so both ceilings include its share.", "", HostLoad.describe(result["host"])]
    (out / "sip_load.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


# -- TLS (issue 19): the same calls over SIP/TLS next to UDP, one server, one run --------------------
# SIPp here is built without TLS, so the TLS caller is an asyncio client on a few persistent TLS
# connections: INVITE, 200, ACK, hold, BYE, 200; INVITE→200 measured per call.
TLS_CONNECTIONS = 16


async def _tls_calls(port: int, ctx, rate: int, seconds: float, hold_ms: int, sink_port: int) -> dict:
    import asyncio
    import secrets

    sys.path.insert(0, str(ROOT))
    from telephony.sip.message import frame_length

    pending: dict[tuple[str, str], "asyncio.Future[bytes]"] = {}
    conns = []

    async def reader(r: "asyncio.StreamReader", w: "asyncio.StreamWriter") -> None:
        buf = b""
        while chunk := await r.read(65536):
            buf += chunk
            while (n := frame_length(buf)) is not None:
                msg, buf = buf[:n], buf[n:]
                head = msg.split(b"\r\n\r\n", 1)[0].decode()
                fields = {ln.split(":", 1)[0].lower(): ln.split(":", 1)[1].strip() for ln in head.split("\r\n")[1:]}
                if not msg.startswith(b"SIP/2.0 "):  # a request of the server's (a BYE): 200
                    w.write((f"SIP/2.0 200 OK\r\nVia: {fields['via']}\r\nFrom: {fields['from']}\r\nTo: {fields['to']}"
                             f"\r\nCall-ID: {fields['call-id']}\r\nCSeq: {fields['cseq']}\r\nContent-Length: 0\r\n\r\n").encode())
                    continue
                if int(msg.split(b" ", 2)[1]) < 200:
                    continue
                fut = pending.pop((fields["call-id"], fields["cseq"].split()[1]), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)

    for _ in range(TLS_CONNECTIONS):
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
        conns.append((w, asyncio.ensure_future(reader(r, w)), w.get_extra_info("sockname")[1]))
    sdp = (f"v=0\r\no=load 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           f"m=audio {sink_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    latencies: list[float] = []
    failures = 0

    async def call(i: int) -> None:
        nonlocal failures
        w, _, lport = conns[i % len(conns)]
        loop = asyncio.get_running_loop()
        cid = f"tls-load-{i}-{secrets.token_hex(4)}"
        def req(method: str, cseq: int, to: str, body: str = "") -> bytes:
            return (f"{method} sip:1000@127.0.0.1:{port};transport=tls SIP/2.0\r\n"
                    f"Via: SIP/2.0/TLS 127.0.0.1:{lport};branch=z9hG4bK{secrets.token_hex(6)}\r\nMax-Forwards: 70\r\n"
                    f"From: <sip:load@127.0.0.1>;tag={i}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n"
                    f"Contact: <sip:load@127.0.0.1:{lport};transport=tls>\r\n"
                    + ("Content-Type: application/sdp\r\n" if body else "")
                    + f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
        try:
            fut = pending[(cid, "INVITE")] = loop.create_future()
            t0 = time.monotonic()
            w.write(req("INVITE", 1, "<sip:1000@127.0.0.1>", sdp))
            ok = await asyncio.wait_for(fut, 10)
            if not ok.startswith(b"SIP/2.0 200 "):
                failures += 1
                return
            latencies.append((time.monotonic() - t0) * 1000)
            to = next(ln.split(":", 1)[1].strip() for ln in ok.decode().split("\r\n") if ln.lower().startswith("to:"))
            w.write(req("ACK", 1, to))
            await asyncio.sleep(hold_ms / 1000)
            fut = pending[(cid, "BYE")] = loop.create_future()
            w.write(req("BYE", 2, to))
            if not (await asyncio.wait_for(fut, 10)).startswith(b"SIP/2.0 200 "):
                failures += 1
        except (asyncio.TimeoutError, ConnectionError):
            failures += 1

    calls = int(rate * seconds)
    start = time.monotonic()
    tasks = []
    for i in range(calls):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        tasks.append(asyncio.ensure_future(call(i)))
    await asyncio.gather(*tasks)
    for w, rd, _ in conns:
        w.close()
        rd.cancel()
    latencies.sort()
    pct = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None  # noqa: E731
    return dict(rate=rate, calls=calls, successful=calls - failures, failed=failures,
                invite_200_p50_ms=pct(0.5), invite_200_p99_ms=pct(0.99))


def tls_main(a: argparse.Namespace) -> int:
    import asyncio
    import ssl

    sys.path.insert(0, str(ROOT))
    from sip_tests.tls_certs import make_certs

    rates = [int(r) for r in a.rates.split(",")] if a.rates else [200]
    result: dict = dict(machine=f"{os.cpu_count()} cores", load_average=os.getloadavg()[0], date=time.strftime("%Y-%m-%d"),
                        commit=subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                              text=True).stdout.strip(), hold_ms=a.hold_ms, seconds=a.seconds, rows=[])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        certs = make_certs(work / "certs")
        port, tls_port = free_port(), free_port()
        proc = start_ours(work, port)  # (UDP only) restarted below with TLS on
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        cfg = (work / "server.yaml").read_text().replace(
            "  tcp: false\n", f"  tcp: false\n  tls:\n    listen: 127.0.0.1:{tls_port}\n"
                               f"    cert_file: {certs.server_cert}\n    key_file: {certs.server_key}\n")
        (work / "server.yaml").write_text(cfg)
        proc = subprocess.Popen([sys.executable, "-m", "sip_tts.cli", "serve", "--config", str(work / "server.yaml"),
                                 "--log-level", "WARNING"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=open(work / "server.log", "w"), text=True)
        assert proc.stdout is not None and "ready" in proc.stdout.readline(), (work / "server.log").read_text()
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        try:
            for rate in rates:
                (work / "udp").mkdir(exist_ok=True)
                r = run_rate(port, rate, a.seconds, a.hold_ms, work / "udp", proc.pid)
                r["transport"] = "UDP (SIPp)"
                result["rows"].append(r)
                print(f"UDP {rate} cps: {r['successful']}/{r['calls']} ok, {r['failed']} failed, "
                      f"p50 {r['invite_200_p50_ms']} p99 {r['invite_200_p99_ms']} ms", flush=True)
                time.sleep(a.hold_ms / 1000 + 2)
                cpu0, t0 = proc_cpu_seconds(proc.pid), time.monotonic()
                r = asyncio.run(_tls_calls(tls_port, ctx, rate, a.seconds, a.hold_ms, sink.getsockname()[1]))
                wall = time.monotonic() - t0
                r.update(transport="TLS (asyncio client)", server_cpu_percent=100 * (proc_cpu_seconds(proc.pid) - cpu0) / wall,
                         server_rss_mb=proc_rss_mb(proc.pid), retransmissions=0)
                result["rows"].append(r)
                print(f"TLS {rate} cps: {r['successful']}/{r['calls']} ok, {r['failed']} failed, "
                      f"p50 {r['invite_200_p50_ms']} p99 {r['invite_200_p99_ms']} ms", flush=True)
        finally:
            sink.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sip_load_tls.json").write_text(json.dumps(result, indent=1))
    md = [f"# SIP load, UDP and TLS ({result['machine']}, load average {result['load_average']:.1f}, {result['date']}, "
          f"commit {result['commit']}, calls held {a.hold_ms} ms)", "",
          "`python benchmarks/sip_load.py --tls` — one server with UDP and TLS listeners; UDP calls from SIPp "
          f"(uac_pcmu_bye.xml), TLS calls from an asyncio client on {TLS_CONNECTIONS} connections "
          f"(SIPp here has no TLS); {a.seconds:.0f} s per row.", "",
          "| cps | transport | ok/failed | INVITE→200 p50/p99 ms | server CPU % | RSS MB |", "|---|---|---|---|---|---|"]
    if result["load_average"] > (os.cpu_count() or 1):
        md[2:2] = [f"**Load average {result['load_average']:.1f} on {os.cpu_count()} cores: other work held the cores "
                   "(see the server's CPU %); rerun on an idle machine for the capacity numbers.**", ""]
    for r in result["rows"]:
        md.append(f"| {r['rate']} | {r['transport']} | {r['successful']}/{r['failed']} | "
                  f"{r['invite_200_p50_ms']}/{r['invite_200_p99_ms']} | {r['server_cpu_percent']:.0f} | {r['server_rss_mb']:.0f} |")
    (out / "sip_load_tls.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if all(r["failed"] == 0 for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
