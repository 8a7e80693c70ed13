"""What asking an application costs a caller: webhook routes against the same speech from a script.

    python benchmarks/webhook_latency.py [--calls 1,8,32] [--think-ms 0,100] [--listen-s 2]

Starts ``sip-tts serve`` (espeak) and a small application on loopback (sip_tests/webhook_app.py:
a threaded HTTP server in this process that answers each call with a ``say`` step naming the
call's order number, after ``--think-ms``). Route 2000 asks the application; route 1000 says
the same sentence from prompts.yaml (a template, so both are synthesised per call). For each N,
N loopback callers (benchmarks/e2e_load.py's) dial at once (spread over 1 s): INVITE -> 200 and
INVITE -> first audible packet, p50/p95, and RTP gaps > 30 ms by kernel receive time while they
listen. The difference between the rows is the webhook (HTTP on loopback, JSON, validation) plus
the application's thinking; nothing else differs.

Writes benchmarks/results/webhook_latency.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from e2e_load import load  # noqa: E402
from hostload import HostLoad  # noqa: E402

from sip_tests.webhook_app import Answer, Application  # noqa: E402
from tests.sipmsg import LOOPBACK  # noqa: E402

SECRET = "benchmark-secret-0123456789"
TEXT = "Thank you for calling. Your order {} is confirmed for Tuesday at nine."
NOTE = ("Read the webhook rows against the script rows of the same N: they differ only by the webhook. "
        "Gaps appear in the script rows too when the host is saturated (a shared 2-core machine): they are the "
        "host's, and the benchmark's own callers and application share it.")


def start_server(work: Path, port: int, app: Application, calls: int) -> subprocess.Popen:
    (work / "prompts.yaml").write_text(
        f"webhooks:\n  secret: {SECRET}\n  timeout_s: 5\nroutes:\n"
        f'  - number: "2000"\n    webhook: {app.url}/call\n'
        f'  - number: "1000"\n    say: "{TEXT.format("{headers[X-Order]}")}"\n')
    (work / "server.yaml").write_text(
        f"sip:\n  listen: {LOOPBACK}:{port}\n  advertised_address: {LOOPBACK}\n  tcp: false\n"
        "rtp:\n  port_min: 30000\n  port_max: 39999\napi:\n  enabled: false\n"
        f"limits:\n  max_calls: {calls * 2}\nprompts: prompts.yaml\ndrain_timeout_s: 0\n")
    proc = subprocess.Popen([sys.executable, "-m", "sip_tts.cli", "serve", "--config", str(work / "server.yaml"),
                             "--log-level", "WARNING"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=open(work / "server.log", "w"), text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if "ready" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}\n{(work / 'server.log').read_text()[-3000:]}")
    return proc


def reply(request: dict) -> bytes:
    return json.dumps({"steps": [{"say": TEXT.format(request["headers"].get("X-Order", ""))}]}).encode()


def render_md(r: dict) -> str:
    h = r["host"]
    lines = [f"# Webhook routes: what asking an application costs ({r['date']}, {h['cores']} CPUs, espeak)", "",
             "Command: `python benchmarks/webhook_latency.py` (in its own network namespace). The application is "
             "a threaded HTTP server on loopback; both routes synthesise the same sentence per call.",
             HostLoad.describe(h), "",
             "| route | think ms | calls | ok | INVITE->200 p50 / p95 ms | first audible p50 / p95 ms "
             "| gaps > 30 ms / packets |", "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        ms = [row[k][q] for k in ("invite_200_ms", "first_audio_ms") for q in ("p50", "p95")]
        cells = [row["route"], row["think_ms"], row["calls"], row["ok"], "%.1f / %.1f" % tuple(ms[:2]),
                 "%.0f / %.0f" % tuple(ms[2:]), f"{row['gaps_kernel']} / {row['packets']}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines + ["", r["note"]]) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", default="1,8,32")
    ap.add_argument("--think-ms", default="0,100", help="the application's thinking time before it answers")
    ap.add_argument("--listen-s", type=float, default=2.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    counts = [int(x) for x in a.calls.split(",")]
    thinks = [int(x) for x in a.think_ms.split(",")]
    host = HostLoad()
    app = Application(SECRET).start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_server(Path(tmp), port, app, max(counts))
        try:
            app.answers["/call"] = Answer(make=reply)
            asyncio.run(load(port, 1, 0.5, 0, "2000"))  # warm-up
            for n in counts:
                for route, think in [("script", 0)] + [("webhook", t) for t in thinks]:
                    app.answers["/call"] = Answer(make=reply, delay_s=think / 1000)
                    row = asyncio.run(load(port, n, a.listen_s, 1.0 if n > 1 else 0,
                                           "1000" if route == "script" else "2000"))
                    row.update(route=route, think_ms=think)
                    rows.append(row)
                    print(f"  {route:7s} think {think:3d} ms N={n:3d}: ok {row['ok']}/{n}, INVITE->200 p50/p95 "
                          f"{row['invite_200_ms']['p50']:.1f}/{row['invite_200_ms']['p95']:.1f} ms, first audible "
                          f"p50/p95 {row['first_audio_ms']['p50']:.0f}/{row['first_audio_ms']['p95']:.0f} ms, gaps "
                          f"{row['gaps_kernel']}/{row['packets']}, errors {row['errors']}", flush=True)
                    time.sleep(1.0)
        finally:
            proc.terminate()
            proc.wait(30)
            app.stop()
    result = dict(date=dt.date.today().isoformat(), host=host.finish(), listen_s=a.listen_s, rows=rows, note=NOTE,
                  method="sip-tts serve (espeak) + an HTTP application on loopback; callers from "
                         "benchmarks/e2e_load.py")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    for ext, text in (("json", json.dumps(result, indent=1)), ("md", render_md(result))):
        (Path(a.out) / f"webhook_latency.{ext}").write_text(text)
    print(render_md(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
