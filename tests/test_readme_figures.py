"""The README's pacer and SIP-load figures are the ones the benchmarks last wrote.

A benchmark re-run (benchmarks/rtp_pacing.py, sip_load.py) rewrites its results file; this
test then names each README figure that no longer matches, so a claim cannot outlive its
measurement.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def readme() -> str:
    return " ".join((ROOT / "README.md").read_text().split())  # line breaks do not matter


def test_pacer_figures_are_rtp_pacing_json():
    r = json.loads((RESULTS / "rtp_pacing.json").read_text())
    row = next(x for x in r["runs"] if x["n"] == 1000)
    host = r["host"]
    for claim in (f"rtp_pacing.md, {r['date']}", f"load average {host['loadavg_1m_start']:.1f}",
                  f"machine {host['machine_cpu_busy_percent']:.0f}% busy",
                  f"1,000 streams send-time error p99 {row['ours']['err_p99_ms']:.1f} ms",
                  f"{row['ours']['late_frames']} late frames", f"{row['ours']['cpu_percent']:.0f}% CPU",
                  f"one sleeping task per call p99 {row['naive']['err_p99_ms']:.1f} ms"):
        assert claim in readme(), f"README does not say {claim!r} (benchmarks/results/rtp_pacing.json)"


def test_sip_load_figures_are_sip_load_json():
    r = json.loads((RESULTS / "sip_load.json").read_text())
    first = r["ours"][0]
    h = r["host"]
    for claim in (f"sip_load.md, {r['date']}", f"load average {int(h['loadavg_1m_start'])}-{int(h['loadavg_1m_end'])}",
                  f"ours {r['ours_sustained_cps']} calls/s with 0 failures",
                  f"first failing rate {r['ours_first_failing_cps']}",
                  f"SIPp's own UAS {r['reference_sustained_cps']} calls/s",
                  f"first failing {r['reference_first_failing_cps']}",
                  f"INVITE→200 p50 {first['invite_200_p50_ms']:.2f} ms at {first['rate']} calls/s",
                  f"calls per second / {r['ours_sustained_cps'] // 2}",
                  f"half the {r['ours_sustained_cps']} cps"):
        assert claim in readme(), f"README does not say {claim!r} (benchmarks/results/sip_load.json)"


def test_agent_latency_figures_are_agent_latency_json():
    r = json.loads((RESULTS / "agent_latency.json").read_text())
    one, n32, n128 = r["latency"]
    f = lambda row, k: f"{row[k]['p50']:.1f}/{row[k]['p95']:.1f} ms"  # noqa: E731
    s = json.loads((RESULTS / "agent_latency_process_32streams.json").read_text())["stream"]
    for claim in (f"agent_latency.md`, {r['date']}", f"one call {f(one, 'e2e_ms')} p50/p95 end to end",
                  f"32 calls pushing text at the same moment: {f(n32, 'e2e_ms')}", f"128 at once: {f(n128, 'e2e_ms')}",
                  f"{s['server_late_frames']:.0f} late frames of {s['caller_packets_sent']:,}"):
        assert claim in readme(), f"README does not say {claim!r} (benchmarks/results/agent_latency*.json)"
