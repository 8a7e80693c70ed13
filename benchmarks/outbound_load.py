"""Outbound call load: POST /v1/calls at rising rates through a trunk whose far end is SIPp's UAS,
until a rate fails.

    unshare --net bash -c 'ip link set lo up; python benchmarks/outbound_load.py'
    python benchmarks/outbound_load.py --rates 50,100,200,300 --seconds 5

Each call: the API request, our INVITE (the trunk has no digest here), SIPp answers at once
(sip_tests/scenarios/uas_answer.xml), we ACK, play a fixed prompt from the prompt cache
(warmed at start-up: the notification case) and hang up; SIPp answers the BYE. A rate passes
when every request got 201, SIPp counted every call successful and none failed, and the
request->INVITE p99 stayed under ``--max-p99-ms`` (1 s: beyond it requests are queueing).

Measured from a tcpdump capture of lo (kernel timestamps; the client's send times are taken
from the same wall clock just before each request is written):

* API request -> INVITE on the wire: the request for call N to our first INVITE for
  ``sip:bench-N@...`` (its retransmissions ignored);
* 200 OK -> first RTP packet and -> first audible packet (a frame not all silence) of that
  call, told apart by the RTP source port our INVITE's SDP offered.

Also the server's CPU % and RSS and the host's load (shared machine). JSON and a table go to
benchmarks/results/outbound_load.{json,md}. Run it in a network namespace of its own (as
above), as root (tcpdump).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
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
from benchmarks.sip_load import free_port, proc_cpu_seconds, proc_rss_mb  # noqa: E402
from sip_tests.pcap import read_udp  # noqa: E402

SCENARIO = ROOT / "sip_tests" / "scenarios" / "uas_answer.xml"
TEXT = "Your code is four two seven one."
_CALL_ID = re.compile(rb"^(?:Call-ID|i)[ \t]*:[ \t]*(\S+)", re.M | re.I)
_INVITE_CSEQ = re.compile(rb"^CSeq[ \t]*:[ \t]*\d+[ \t]+INVITE", re.M | re.I)
ERRORS = Path(tempfile.gettempdir()) / "outbound_load_sipp_errors.log"  # SIPp's account of failed calls
_BENCH_USER = re.compile(rb"^INVITE sip:bench-(\d+)@")
_AUDIO_PORT = re.compile(rb"^m=audio (\d+) ", re.M)


def start_server(work: Path, sip_port: int, api_port: int, trunk_port: int) -> subprocess.Popen:
    (work / "prompts.yaml").write_text(f'routes:\n  "1000": "{TEXT}"\n')  # rendered into the cache at start-up
    (work / "server.yaml").write_text(
        f"sip:\n  listen: 127.0.0.1:{sip_port}\n  advertised_address: 127.0.0.1\n  tcp: false\n"
        "rtp:\n  port_min: 30000\n  port_max: 59999\nlimits:\n  max_calls: 5000\nprompts: prompts.yaml\n"
        f"drain_timeout_s: 0\nhangup_after_prompt_ms: 200\napi:\n  listen: 127.0.0.1:{api_port}\n"
        f"trunks:\n  bench:\n    address: 127.0.0.1:{trunk_port}\n")
    proc = subprocess.Popen([sys.executable, "-m", "sip_tts.cli", "serve", "--config", str(work / "server.yaml"),
                             "--log-level", "WARNING"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=open(work / "server.log", "w"), text=True)
    assert proc.stdout is not None and "ready" in proc.stdout.readline(), (work / "server.log").read_text()
    time.sleep(2)  # the prompt cache warms in the background
    return proc


def start_uas(work: Path, port: int, sink_port: int) -> subprocess.Popen:
    proc = subprocess.Popen(["sipp", "-sf", str(SCENARIO), "-i", "127.0.0.1", "-p", str(port), "-nostdin",
                             "-key", "sink_port", str(sink_port), "-key", "pt", "0", "-key", "codec", "PCMU", "-trace_stat", "-fd", "1",
                             "-stf", str(work / "uas_stats.csv"), "-trace_err", "-error_file", str(ERRORS)],
                            cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc


def uas_counts(work: Path) -> dict[str, int]:
    rows = (work / "uas_stats.csv").read_text().strip().splitlines()
    return {h: int(v) for h, v in zip(rows[0].split(";"), rows[-1].split(";")) if h.endswith("(C)") and v.isdigit()}


async def send_calls(api_port: int, rate: int, seconds: float, first: int) -> tuple[dict[int, float], dict[int, int]]:
    """POST /v1/calls ``rate`` times a second; per call N: wall-clock send time and HTTP status."""
    import httpx

    sent: dict[int, float] = {}
    status: dict[int, int] = {}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", limits=limits, timeout=30) as client:
        async def one(n: int) -> None:
            body = {"to": f"sip:bench-{n}@127.0.0.1", "trunk": "bench", "say": TEXT}
            sent[n] = time.time()
            try:
                status[n] = (await client.post("/v1/calls", json=body)).status_code
            except httpx.HTTPError:
                status[n] = 0
        start = time.monotonic()
        tasks = []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.ensure_future(one(first + i)))
        await asyncio.gather(*tasks)
    return sent, status


def audible(payload: bytes) -> bool:
    """Not a silent frame: some μ-law sample louder than about -50 dBFS (codes 0x00-0x5F / 0x80-0xDF)."""
    return any((b & 0x7F) < 0x60 for b in payload)


def analyse(pcap: Path, sip_port: int, sent: dict[int, float]) -> dict[str, list[float]]:
    invite_at: dict[bytes, tuple[float, int, int]] = {}  # Call-ID -> (time, N, our RTP port)
    ok_at: dict[bytes, float] = {}
    first_rtp: dict[int, float] = {}
    first_loud: dict[int, float] = {}
    for p in read_udp(pcap):
        data = p.payload
        if p.src[1] == sip_port and data.startswith(b"INVITE sip:bench-"):
            m, cid, port = _BENCH_USER.match(data), _CALL_ID.search(data), _AUDIO_PORT.search(data)
            if m and cid and port and cid.group(1) not in invite_at:
                invite_at[cid.group(1)] = (p.time, int(m.group(1)), int(port.group(1)))
        elif p.dst[1] == sip_port and data.startswith(b"SIP/2.0 200") and _INVITE_CSEQ.search(data):
            cid = _CALL_ID.search(data)
            if cid:
                ok_at.setdefault(cid.group(1), p.time)
        elif 30000 <= p.src[1] <= 59999 and len(data) > 12 and data[0] >> 6 == 2:
            first_rtp.setdefault(p.src[1], p.time)
            if p.src[1] not in first_loud and audible(data[12:]):
                first_loud[p.src[1]] = p.time
    req_invite, ok_rtp, ok_loud = [], [], []
    for cid, (t, n, port) in invite_at.items():
        if n in sent:
            req_invite.append((t - sent[n]) * 1e3)
        if cid in ok_at:
            if port in first_rtp:
                ok_rtp.append((first_rtp[port] - ok_at[cid]) * 1e3)
            if port in first_loud:
                ok_loud.append((first_loud[port] - ok_at[cid]) * 1e3)
    return dict(request_to_invite=sorted(req_invite), ok_to_first_rtp=sorted(ok_rtp), ok_to_audible=sorted(ok_loud))


def pct(values: list[float], q: float) -> float | None:
    return round(values[min(len(values) - 1, int(q * len(values)))], 2) if values else None


def run_rate(rate: int, seconds: float, ports: dict, work: Path, pid: int, first: int, max_p99_ms: float) -> dict:
    run = work / f"rate{rate}"
    run.mkdir()
    before = uas_counts(work) if (work / "uas_stats.csv").exists() else {}
    cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
    cap = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-U", "-s", "1500", "-B", "65536", "-w", str(run / "cap.pcap"),
                            "udp"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert cap.stderr is not None
    while "listening on" not in cap.stderr.readline():
        pass
    sent, status = asyncio.run(send_calls(ports["api"], rate, seconds, first))
    wall = time.monotonic() - t0
    time.sleep(6)  # the last calls play their prompt (2 s) and end; SIPp writes its counters each second
    cap.send_signal(signal.SIGINT)
    cap.wait(30)
    cpu = 100 * (proc_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    after = uas_counts(work)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    lat = analyse(run / "cap.pcap", ports["sip"], sent)
    (run / "cap.pcap").unlink()
    calls = len(sent)
    created = sum(1 for s in status.values() if s == 201)
    out = dict(rate=rate, calls=calls, created=created, refused={str(s): n for s in set(status.values()) if s != 201
                                                                   for n in [list(status.values()).count(s)]},
               uas_successful=delta.get("SuccessfulCall(C)", 0), uas_failed=delta.get("FailedCall(C)", 0),
               uas_retransmissions=delta.get("Retransmissions(C)", 0), send_wall_s=round(wall, 2),
               server_cpu_percent=round(cpu), server_rss_mb=round(proc_rss_mb(pid)),
               loadavg_1m=round(os.getloadavg()[0], 2), measured_calls=len(lat["request_to_invite"]))
    for name, values in lat.items():
        out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = pct(values, 0.5), pct(values, 0.99)
    slow = out["request_to_invite_p99_ms"] is None or out["request_to_invite_p99_ms"] > max_p99_ms
    out["passed"] = created == calls and out["uas_successful"] == calls and out["uas_failed"] == 0 and not slow
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_rate_search(ap, start=50, max_rate=600, seconds=5.0)
    ap.add_argument("--max-p99-ms", type=float, default=1000.0, help="a rate whose request->INVITE p99 is over this "
                    "fails too (the server is not keeping up: requests queue)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    rates = [int(r) for r in a.rates.split(",")] if a.rates else None
    host = HostLoad()
    result: dict = dict(machine=f"{os.cpu_count()} cores", date=time.strftime("%Y-%m-%d"), seconds=a.seconds,
                        text=TEXT, mode="fixed rates" if rates else f"search from {a.start} x{a.factor}", runs=[])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ports = dict(sip=free_port(), api=free_port(), uas=free_port(), sink=free_port())
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", ports["sink"]))  # (RTP arrives here; the capture reads it)
        uas = start_uas(work, ports["uas"], ports["sink"])
        server = start_server(work, ports["sip"], ports["api"], ports["uas"])
        try:
            rate, first = (rates[0] if rates else a.start), 0
            while True:
                r = run_rate(rate, a.seconds, ports, work, server.pid, first, a.max_p99_ms)
                first += r["calls"]
                result["runs"].append(r)
                print(f"{rate:4d} calls/s: {'pass' if r['passed'] else 'FAIL'} {r['created']}/{r['calls']} created, "
                      f"SIPp {r['uas_successful']} ok {r['uas_failed']} failed; request->INVITE p50/p99 "
                      f"{r['request_to_invite_p50_ms']}/{r['request_to_invite_p99_ms']} ms; 200->audio p50/p99 "
                      f"{r['ok_to_audible_p50_ms']}/{r['ok_to_audible_p99_ms']} ms; cpu {r['server_cpu_percent']}%, "
                      f"load {r['loadavg_1m']}", flush=True)
                if rates is not None:
                    if len(result["runs"]) == len(rates):
                        break
                    rate = rates[len(result["runs"])]
                else:
                    if not r["passed"] or rate >= a.max_rate:
                        break
                    rate = min(a.max_rate, int(round(rate * a.factor)))
                time.sleep(2)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
            uas.send_signal(signal.SIGTERM)
            uas.wait(10)
            sink.close()
    result["host"] = host.finish()
    passed = [r["rate"] for r in result["runs"] if r["passed"]]
    result["sustained_calls_per_s"] = max(passed) if passed else 0
    failing = next((r for r in result["runs"] if not r["passed"]), None)
    result["first_failing_calls_per_s"] = failing["rate"] if failing else None
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "outbound_load.json").write_text(json.dumps(result, indent=1))

    def ms(r: dict, name: str) -> str:
        return f"{r[f'{name}_p50_ms']}/{r[f'{name}_p99_ms']}"

    md = [f"# Outbound call load ({result['machine']}, {result['date']}, {a.seconds:.0f} s per rate)", "",
          "`python benchmarks/outbound_load.py` (in its own network namespace): POST /v1/calls at rising rates through "
          "a trunk to SIPp's UAS (uas_answer.xml, answers at once); each call plays a cached prompt "
          f"(\"{TEXT}\") and we hang up. Times from a tcpdump capture of lo (kernel timestamps).", "",
          "| calls/s | result | 201 / asked | SIPp ok / failed | request→INVITE p50/p99 ms | 200→first RTP p50/p99 ms "
          "| 200→audible p50/p99 ms | server CPU % | RSS MB | load 1 min |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        md.append(f"| {r['rate']} | {'pass' if r['passed'] else '**fail**'} | {r['created']}/{r['calls']} | "
                  f"{r['uas_successful']}/{r['uas_failed']} | {ms(r, 'request_to_invite')} | {ms(r, 'ok_to_first_rtp')} | "
                  f"{ms(r, 'ok_to_audible')} | {r['server_cpu_percent']} | {r['server_rss_mb']} | {r['loadavg_1m']} |")
    md += ["", f"Sustained (every call created and answered, none failed, request→INVITE p99 ≤ {a.max_p99_ms:.0f} ms): "
               f"{result['sustained_calls_per_s']} calls/s; "
               f"first failing rate: {result['first_failing_calls_per_s'] or 'none up to --max-rate'}. The HTTP client "
               "and SIPp run on the same cores as the server.", "", HostLoad.describe(result["host"])]
    (out / "outbound_load.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
