"""Scale-out behind Kamailio's dispatcher: spread, a dead instance, a draining instance."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import PEERS, ROOT, free_udp_port, require, run_sipp, sipp_counts


CONFIG = ROOT / "config" / "kamailio" / "kamailio.cfg"


@pytest.fixture
def kamailio(tmp_path):
    """Kamailio with our config/kamailio/kamailio.cfg in front of the given instances (probes every 1 s)."""
    require("kamailio")
    started: list[Path] = []

    def start(*backends: int) -> int:
        port = free_udp_port()
        run = tmp_path / f"kam{port}"
        run.mkdir()
        (run / "dispatcher.list").write_text("".join(f"1 sip:127.0.0.1:{b} 0 0\n" for b in backends))
        with open(run / "kamailio.log", "a") as log:
            res = subprocess.run(
                ["kamailio", "-f", str(CONFIG), "-l", f"udp:127.0.0.1:{port}",
                 "-A", f'DS_LIST_FILE="{run}/dispatcher.list"', "-A", "DS_PING_INTERVAL=1",
                 "-A", "DS_PROBE_FAILURES=1", "-P", str(run / "kamailio.pid"), "-Y", str(run), "-w", str(run),
                 "-m", "64", "-M", "8", "-E"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                timeout=30)
        assert res.returncode == 0, (run / "kamailio.log").read_text()[-2000:]
        for _ in range(50):
            if (run / "kamailio.pid").exists() and (run / "kamailio.pid").read_text().strip():
                break
            time.sleep(0.1)
        started.append(run)
        time.sleep(2.5)  # first OPTIONS probes
        return port

    yield start
    for run in started:
        try:
            pid = int((run / "kamailio.pid").read_text().strip())
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)
        except (OSError, ValueError):
            pass


def calls_on(srv) -> int:
    return srv.log_text().count("ended: prompt-done")


def test_calls_spread_and_a_killed_instance_is_routed_around(start_server, kamailio, tmp_path):
    a, b = start_server(prompts='default: "Hello."\n'), start_server(prompts='default: "Hello."\n')
    kport = kamailio(a.port, b.port)
    res = run_sipp(f"127.0.0.1:{kport}", "uac_pcmu_wait_bye.xml", "2000", tmp_path, "-m", "6", "-r", "3",
                   "-recv_timeout", "15000", media_port=18800)
    assert res.returncode == 0, res.stdout[-1500:]
    assert calls_on(a) == 3 and calls_on(b) == 3  # round robin; our BYEs went back through the proxy
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(5)
    time.sleep(3)  # a failed probe marks it inactive
    (tmp_path / "after").mkdir()
    res = run_sipp(f"127.0.0.1:{kport}", "uac_pcmu_wait_bye.xml", "2000", tmp_path / "after", "-m", "6", "-r", "3",
                   "-recv_timeout", "15000", media_port=18900)
    assert res.returncode == 0, res.stdout[-1500:]
    assert sipp_counts(tmp_path / "after")["SuccessfulCall(C)"] == 6
    assert calls_on(a) == 9


def test_a_draining_instance_leaves_rotation_and_finishes_its_calls(start_server, kamailio, tmp_path):
    a = start_server(prompts='default: "Hello."\n')
    b = start_server(drain=20)  # the default prompt set: "1000" plays for a few seconds
    kport = kamailio(a.port, b.port)
    from .conftest import PEERS as peers
    long_call = subprocess.Popen(
        ["sipp", f"127.0.0.1:{kport}", "-sf", str(peers / "sipp" / "uac_pcmu_wait_bye.xml"), "-s", "1000",
         "-i", "127.0.0.1", "-p", str(free_udp_port()), "-mi", "127.0.0.1", "-mp", "19000", "-m", "2", "-l", "2",
         "-nostdin", "-recv_timeout", "20000"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)  # one call on each instance
    b.proc.send_signal(signal.SIGTERM)  # drain b: OPTIONS now 503, its call goes on
    time.sleep(2.5)
    (tmp_path / "more").mkdir()
    res = run_sipp(f"127.0.0.1:{kport}", "uac_pcmu_wait_bye.xml", "2000", tmp_path / "more", "-m", "4", "-r", "2",
                   "-recv_timeout", "15000", media_port=19100)
    assert res.returncode == 0, res.stdout[-1500:]
    out, _ = long_call.communicate(timeout=30)
    assert long_call.returncode == 0, out[-1500:]  # both first calls finished, b's included
    assert b.proc.wait(20) == 0
    assert calls_on(b) == 1  # only the call it had before draining
    assert calls_on(a) == 1 + 4
