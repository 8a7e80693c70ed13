"""benchmarks/two_gpus.py keeps working: two espeak instances behind our Kamailio config on CPU.

The GPU figures come from running it on a two-GPU machine (benchmarks/results/two_gpus.md); this
runs the same code path with tiny numbers so the one-command measurement does not rot: calls
through the proxy land on both instances, and a drained instance finishes its calls while new
ones go to the other.
"""

import json
import subprocess
import sys

from .conftest import ROOT, free_udp_port, require


def test_two_instances_behind_kamailio_carry_calls_and_drain(tmp_path):
    require("kamailio")
    ports = [free_udp_port(), free_udp_port(), free_udp_port()]
    res = subprocess.run(
        [sys.executable, "benchmarks/two_gpus.py", "--engine", "espeak", "--device", "cpu", "--calls", "4",
         "--phases", "load,drain", "--fault-calls", "4", "--fault-listen-s", "3", "--fault-at-s", "1",
         "--listen-s", "1", "--pause-s", "0.5", "--warmup-calls", "2",
         "--sip-ports", f"{ports[0]},{ports[1]}", "--kamailio-port", str(ports[2]), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    run = json.loads((tmp_path / "two_gpus.json").read_text())["runs"][-1]
    load = run["load"][0]
    assert load["total"]["carried"] == 4
    assert load["instance0"]["carried"] == 2 and load["instance1"]["carried"] == 2  # round robin
    assert load["total"]["packets"] > 4 * 40  # a second of 20 ms packets per call, at least
    drain = run["drain"]
    assert drain["draining_instance_calls"] == 2 and drain["draining_calls_finished"] == 2
    assert drain["new_calls_on_draining"] == 0 and drain["after"]["total"]["carried"] == 2
    assert drain["exit_code"] == 0
    assert "## " in (tmp_path / "two_gpus.md").read_text()
