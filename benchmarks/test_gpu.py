"""Run the GPU-only tests (tests_gpu/) and record the run: card, date, commit, each test's outcome.

    python benchmarks/test_gpu.py [--out benchmarks/results] [pytest args...]

Writes test_gpu.json and test_gpu.md to ``--out`` (and, when that is elsewhere, to
benchmarks/results too): per test its outcome, seconds and what it printed (the measured
SNRs and errors). Skips fail the run (SIP_TTS_NO_SKIPS=1): a host without CUDA records a
failed run, not a green one. The commit is ``$COMMIT`` when set (the device's copy of the tree
has no .git), else ``git rev-parse HEAD``. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def commit() -> str:
    if os.environ.get("COMMIT"):
        return os.environ["COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def card() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
        return f"no CUDA device (torch {torch.__version__})"
    except ImportError:
        return "no torch"


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def outcomes(junit: Path) -> list[dict]:
    rows = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        detail = ""
        for kind in ("failure", "error", "skipped"):
            el = case.find(kind)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                detail = (el.get("message") or "")[:300]
        out = case.findtext("system-out") or ""
        printed = [line for line in out.splitlines() if line.strip() and not line.startswith("---")]
        rows.append(dict(test=f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}", outcome=outcome,
                         seconds=round(float(case.get("time") or 0), 2), printed=printed[-8:], detail=detail))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a, pytest_args = ap.parse_known_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    junit = out / "test_gpu.junit.xml"
    junit.unlink(missing_ok=True)  # never read a previous run's outcomes
    env = dict(os.environ, SIP_TTS_NO_SKIPS="1")
    started = dt.datetime.now(dt.timezone.utc)
    rc = subprocess.call([sys.executable, "-m", "pytest", "tests_gpu", "-p", "no:cacheprovider", "-rA",
                          f"--junitxml={junit}", "-o", "junit_logging=system-out", *pytest_args], cwd=ROOT, env=env)
    rows = outcomes(junit) if junit.exists() else []
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("passed", "failed", "error", "skipped")}
    result = dict(card=card(), date=started.strftime("%Y-%m-%d %H:%M UTC"), commit=commit(), pytest_rc=rc,
                  counts=counts, green=rc == 0 and bool(rows) and counts["passed"] == len(rows), tests=rows)
    md = [f"# GPU-only tests (`make test-gpu`): {result['card']}", "",
          f"{result['date']}, commit `{result['commit'][:12]}`: {counts['passed']} passed, {counts['failed']} failed, "
          f"{counts['error']} errors, {counts['skipped']} skipped (pytest exit {rc}).", "",
          "`bash benchmarks/device_test_gpu.sh` on the device (or `make test-gpu` on a GPU host). "
          "Each fused kernel and CUDA graph against its eager path, S3Gen's own stream against the sequential "
          "loop, mixed voices in one batch, float16/bfloat16 against float32.", "",
          "| test | outcome | s | measured |", "|---|---|---|---|"]
    for r in rows:
        measured = "; ".join(r["printed"]) or r["detail"]
        md.append(f"| `{r['test']}` | {r['outcome']} | {r['seconds']} | {measured.replace('|', '/')} |")
    results = (ROOT / "benchmarks" / "results").resolve()
    targets = {out.resolve(), results}
    if not has_cuda():  # a run without a GPU is never recorded as the GPU run (smoke runs: --out elsewhere)
        targets.discard(results)
        if not targets:
            print("no CUDA device: nothing recorded under benchmarks/results (give --out elsewhere)")
    for target in targets:
        target.mkdir(parents=True, exist_ok=True)
        (target / "test_gpu.json").write_text(json.dumps(result, indent=1) + "\n")
        (target / "test_gpu.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
