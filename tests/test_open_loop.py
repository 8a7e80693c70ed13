"""benchmarks/open_loop.py: a smoke run on the CPU (tiny T3, full S3Gen, random weights) that
checks what its JSON reports, and its stock reference queue against queueing theory."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.timeout(600)
def test_open_loop_runs_on_a_cpu_and_reports_every_figure(tmp_path, random_checkpoint):
    """A second of Poisson arrivals after a cold burst and a warm-up, then a saturated half second:
    every level, burst, the highest clean rate and the throughput are in the JSON, and the
    markdown table is written."""
    # --small reads <random-dir>-small and writes a 4x256 checkpoint there only if none is there:
    # it gets the suite's shared one (no second full-size S3Gen on the disk).
    (tmp_path / "ckpt-small").symlink_to(random_checkpoint(4, 256, 3), target_is_directory=True)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "open_loop.py"), "--device", "cpu", "--small", "--dtype",
           "float32", "--random-dir", str(tmp_path / "ckpt"), "--durations", "1", "--rates", "2", "--window", "1",
           "--lead-in", "0", "--no-stock", "--burst", "2", "--burst-seconds", "1", "--warm-up", "1",
           "--warm-up-tokens", "20", "--max-slots", "2", "--saturate", "0.5", "--out", str(tmp_path / "out")]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads((tmp_path / "out" / "open_loop.json").read_text())
    assert r["card"] == "cpu" and r["date"] and r["weights"].startswith("random") and "open_loop.py" in r["command"]
    (level,) = r["ours"]["levels"]
    assert level["rate"] == 2 and level["erlangs"] == 2 and level["utterances"] == 1 and not level["errors"]
    for key in ("ttfa_p50", "ttfa_p95", "ttfa_p99", "rtf_p99"):
        assert math.isfinite(level[key]) and level[key] > 0, key
    assert level["ttfa_p50"] <= level["ttfa_p95"] <= level["ttfa_p99"]
    assert 0 <= level["underrun_share"] <= 1
    assert level["clean"] == (level["utterances_with_underrun"] == 0)
    assert r["ours"]["max_clean_rate"] == (2 if level["clean"] else 0)
    for key in ("cold_burst", "warm_burst"):
        b = r[key]
        assert b["n"] == b["utterances"] == 2 and not b["errors"] and b["turn_max_ms"] > 0
        assert math.isclose(b["audio_s"], 2 * (25 + 3) * 960 / 24000, rel_tol=0.05)  # 25 tokens + 3 silence each
    assert r["warm_up_s"] > 0 and r["saturated_audio_s_per_s"] > 0
    md = (tmp_path / "out" / "open_loop.md").read_text()
    assert "| rate /s | Erlangs |" in md and "cold burst" in md


def test_stock_reference_is_a_fifo_server_of_its_measured_service_times():
    """One length served in 100 ms: at 5 arrivals/s (utilisation 0.5) the mean first audio is the
    M/D/1 wait rho*D/(2(1-rho)) = 50 ms plus the 100 ms service; it saturates at 10/s; lengths
    between the measured ones are interpolated."""
    from open_loop import stock_queue, stock_service

    rows = [dict(seconds=1.0, total_ms=100.0)]
    half = stock_queue(rows, 5.0, (1.0,), utterances=40_000)
    assert half["utilisation"] == 0.5 and not half["saturated"]
    assert abs(half["ttfa_mean"] - 150.0) < 10, half["ttfa_mean"]
    assert half["ttfa_p50"] >= 100 and half["rtf_p99"] > 0.1
    assert stock_queue(rows, 10.0, (1.0,))["saturated"]
    service = stock_service([dict(seconds=1.0, total_ms=300.0), dict(seconds=5.0, total_ms=700.0)])
    assert service(3.0) == pytest.approx(0.5) and service(10.0) == pytest.approx(1.4)
