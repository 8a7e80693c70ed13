"""The pacer's CPU cost per packet, two source trees in one run (a pacer change before/after).

    python benchmarks/pacer_cost.py --trees /tmp/base,. [--streams 1000] [--frames 500] [--repeat 5]

``benchmarks/rtp_pacing.py`` measures send-time error and CPU % on the wall clock; on a shared,
loaded host its figures measure the host (slots skipped in a stall are packets not sent, so CPU %
falls with the load). This takes the clock out: each tree's ``PacerClock`` runs in its own
subprocess on a simulated loop (every timer fired at its deadline), sending real UDP packets to
a local socket, and the CPU time of that thread (``time.thread_time``) is divided by the packets
sent. Trees alternate ``--repeat`` times; the ratio of medians is the answer (of minima beside it:
the least disturbed run of each). Two workloads:
``prompt``: every call's audio queued from the start (rtp_pacing's case); ``live``: every call
alternates 1 s of speech pushed while it sends silence and 0.5 s of silence (a voice agent's
turns: the talkspurt path runs 2 of every 3 seconds per call).

Writes benchmarks/results/pacer_cost.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, socket, sys, time
sys.path.insert(0, sys.argv[1])
from telephony.rtp.pacer import FrameQueue, PacerClock, RtpSender
n, frames, workload = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

class Loop:
    def __init__(self):
        self.now, self.timers = 1000.0, []
    def time(self):
        return self.now
    def call_at(self, when, cb):
        h = [when, cb, False]
        self.timers.append(h)
        class H:
            def cancel(_):
                h[2] = True
        return H()

loop = Loop()
clock = PacerClock(loop)
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); rx.bind(("127.0.0.1", 0))
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); tx.setblocking(False)
dest = rx.getsockname()
sent = [0]
def send(d):
    sent[0] += 1
    try:
        tx.sendto(d, dest)
    except BlockingIOError:
        pass
speech = [bytes([0x80 + i % 64]) * 160 for i in range(frames + 100)]
queues = []
for i in range(n):
    q = FrameQueue(0xFF)
    if workload == "prompt":
        q.push_frames(speech[:frames + 50])
    queues.append(q)
    clock.add(RtpSender(0, "PCMU", send, q))
phases = clock.pacer.phases
start = {}  # sub-slot -> the calls whose speech is pushed then (live)
if workload == "live":
    for i in range(n):
        first = (i * 37) % (75 * phases)
        for k in range(first, frames * phases, 75 * phases):
            start.setdefault(k, []).append(i)
t0 = time.thread_time()
for sub in range(frames * phases):
    live = [h for h in loop.timers if not h[2]]
    loop.timers = []
    for h in live:
        loop.now = h[0]
        h[1]()
    loop.now += 0.0007  # audio arrives between sub-slots
    for i in start.get(sub, ()):
        queues[i].push(b"".join(speech[:50]))
cpu = time.thread_time() - t0
print(json.dumps({"cpu_s": cpu, "packets": sent[0], "us_per_packet": cpu / sent[0] * 1e6}))
"""


def run(tree: str, n: int, frames: int, workload: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, tree, str(n), str(frames), workload], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trees", required=True, help="two source trees, before,after")
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    trees = [str(Path(t).resolve()) for t in a.trees.split(",")]
    results: dict = {w: {t: [] for t in trees} for w in ("prompt", "live")}
    for _ in range(a.repeat):
        for workload in results:
            for tree in trees:
                r = run(tree, a.streams, a.frames, workload)
                results[workload][tree].append(r["us_per_packet"])
                print(f"{workload:6s} {tree}: {r['us_per_packet']:.2f} us/packet ({r['packets']} packets)", flush=True)
    commits = [subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=t, capture_output=True, text=True).stdout.strip()
               or "(exported tree)" for t in trees]
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": f"{platform.node()} ({os.cpu_count()} CPUs)",
              "load_average": os.getloadavg(), "command": " ".join(["python"] + sys.argv), "streams": a.streams,
              "frames": a.frames, "trees": trees, "commits": commits, "us_per_packet": results,
              "ratio_after_over_before": {w: statistics.median(v[trees[1]]) / statistics.median(v[trees[0]])
                                          for w, v in results.items()},
              "ratio_of_minima": {w: min(v[trees[1]]) / min(v[trees[0]]) for w, v in results.items()}}
    md = [f"# Pacer CPU cost per packet, before / after ({report['date']}, {report['host']}, load average "
          f"{report['load_average'][0]:.1f})", "", f"`{report['command']}`: {a.streams} calls, {a.frames} frames each, "
          f"simulated clock, real UDP sends, CPU time of the pacing thread; runs alternated {a.repeat} times.", "",
          "| workload | before µs/packet (median, runs) | after µs/packet (median, runs) | after / before (medians) | "
          "after / before (minima) |", "|---|---|---|---|---|"]
    for w, v in results.items():
        b, f = v[trees[0]], v[trees[1]]
        md.append(f"| {w} | {statistics.median(b):.2f} ({', '.join(f'{x:.2f}' for x in b)}) | {statistics.median(f):.2f} "
                  f"({', '.join(f'{x:.2f}' for x in f)}) | {report['ratio_after_over_before'][w]:.3f} | "
                  f"{report['ratio_of_minima'][w]:.3f} |")
    md += ["", f"Trees: before {trees[0]} ({commits[0]}), after {trees[1]} ({commits[1]})."]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "pacer_cost.json").write_text(json.dumps(report, indent=1) + "\n")
    (Path(a.out) / "pacer_cost.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
