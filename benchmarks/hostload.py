"""What else the host was doing during a benchmark: results from a shared machine say so.

``HostLoad()`` at the start, ``.finish()`` at the end: the load averages at both ends, the
whole machine's CPU busy share over the run (/proc/stat, all processes, ours included), the
cores, and the commit measured. Benchmarks store it in their JSON and print it in their table.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cpu_ticks() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]), idle


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("COMMIT", "unknown")


def gpu_name() -> str | None:
    """The first GPU's name as nvidia-smi gives it (None without one): results say which card."""
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


def add_rate_search(ap, start: int, max_rate: int, seconds: float) -> None:
    """The rate options of a search from ``--start`` up by ``--factor`` (or fixed ``--rates``)."""
    ap.add_argument("--rates", default=None, help="fixed rates (comma-separated) instead of the search")
    ap.add_argument("--start", type=int, default=start)
    ap.add_argument("--factor", type=float, default=1.5)
    ap.add_argument("--max-rate", type=int, default=max_rate)
    ap.add_argument("--seconds", type=float, default=seconds)


class HostLoad:
    def __init__(self) -> None:
        self.load_start = os.getloadavg()
        self.ticks = _cpu_ticks()
        self.t0 = time.monotonic()

    def finish(self) -> dict:
        total, idle = _cpu_ticks()
        dt, di = total - self.ticks[0], idle - self.ticks[1]
        return dict(cores=os.cpu_count(), commit=commit(), nice=os.nice(0), seconds=round(time.monotonic() - self.t0, 1),
                    loadavg_1m_start=round(self.load_start[0], 2), loadavg_1m_end=round(os.getloadavg()[0], 2),
                    machine_cpu_busy_percent=round(100 * (dt - di) / dt, 1) if dt else None,
                    shared=True, note="shared development host: other engineers' builds and tests ran alongside")

    @staticmethod
    def describe(h: dict) -> str:
        return (f"Host: {h['cores']} cores, shared (others' work ran alongside; this run at nice {h.get('nice', 0)}): "
                f"load average {h['loadavg_1m_start']} "
                f"at start, {h['loadavg_1m_end']} at end; whole machine {h['machine_cpu_busy_percent']}% busy "
                f"over the {h['seconds']:.0f} s run (ours included). Commit {h['commit']}.")


def md_table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table (each cell as ``str`` gives it)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def md_report(title: str, command: str, about: str, table: str, note: str) -> str:
    """A result's markdown: title, the command run (and ``about`` it: date, commit, host), table, note."""
    return f"# {title}\n\n`{command}` ({about})\n\n{table}\n{note}\n"


def write_result(name: str, result: dict, md: str, out: Path = ROOT / "benchmarks" / "results") -> None:
    """``<name>.json`` and ``<name>.md`` in ``out`` (benchmarks/results/), and the table printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(md)
    print(md)
