"""Real peers on loopback: the server as a subprocess, SIPp, baresip, tcpdump."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(os.environ.get("PEERS_DIR", ROOT / "sip_tests" / "peers")).resolve()


_HANDED: set[int] = set()


def free_udp_port() -> int:
    """A port free for UDP *and* TCP (a server listens on both; the HTTP API takes one too), below the
    kernel's ephemeral range (32768-60999 by default) and the RTP ranges the tests use (20000 up), so a
    client's outgoing connection cannot take it between this check and the server's bind; never the
    same port twice in one run."""
    rng = random.Random()
    for _ in range(2000):
        port = rng.randrange(12000, 20000)
        if port in _HANDED:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
                u.bind(("127.0.0.1", port))
                t.bind(("127.0.0.1", port))
        except OSError:
            continue
        _HANDED.add(port)
        return port
    raise RuntimeError("no free port in 12000-19999")


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run `make test` (it installs the peers)")
    return path


@dataclass
class RunningServer:
    proc: subprocess.Popen
    port: int
    rtp_range: tuple[int, int]
    workdir: Path
    log: Path

    @property
    def uri_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 45.0) -> int:
        """SIGTERM and wait. The margin covers the drain and the engine process's own 15 s close
        bound (engine/process.py) on a loaded 2-core host; a clean stop is usually well under 1 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"server did not stop on SIGTERM; log:\n{self.log.read_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log.read_text()


PROMPTS = """
routes:
  "1000": "Thank you for calling. This is a test of the media server."
  "2000": "Hello."
  "3000": "This is a long announcement that keeps going for a while so that the caller stays on the line. It repeats. This is a long announcement that keeps going for a while so that the caller stays on the line."
default: "The number you dialed is not in service."
"""


def _start_server(tmp_path: Path, extra_yaml: str = "", prompts: str = PROMPTS, sip_yaml: str = "",
                  drain: float = 3, args: tuple[str, ...] = ()) -> RunningServer:
    port = free_udp_port()
    rtp_min = 21000 + (port % 200) * 100
    (tmp_path / "prompts.yaml").write_text(prompts)
    if "api:" not in extra_yaml:  # the HTTP API is on by default: a port of its own, not 8080 for every server
        extra_yaml += f"\napi:\n  listen: 127.0.0.1:{free_udp_port()}\n"
    (tmp_path / "server.yaml").write_text(
        f"sip:\n  listen: 127.0.0.1:{port}\n  advertised_address: 127.0.0.1\n{sip_yaml}"
        f"rtp:\n  port_min: {rtp_min}\n  port_max: {rtp_min + 99}\n"
        f"prompts: prompts.yaml\ndrain_timeout_s: {drain}\n{extra_yaml}")
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sip_tts.cli", "serve", "--config", str(tmp_path / "server.yaml"), *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "ready" not in line:
        proc.kill()
        raise AssertionError(f"server did not start: {line!r}\n{log.read_text()}")
    return RunningServer(proc, port, (rtp_min, rtp_min + 99), tmp_path, log)


@pytest.fixture
def server(tmp_path):
    srv = _start_server(tmp_path)
    yield srv
    srv.stop()


@pytest.fixture
def start_server(tmp_path):
    started: list[RunningServer] = []

    def start(extra_yaml: str = "", prompts: str = PROMPTS, sip_yaml: str = "", drain: float = 3,
              args: tuple[str, ...] = ()) -> RunningServer:
        """``sip_yaml``: more lines of the sip: section, indented two spaces; ``drain``: drain_timeout_s;
        ``args``: more command-line arguments of ``serve``."""
        d = tmp_path / f"srv{len(started)}"
        d.mkdir()
        srv = _start_server(d, extra_yaml, prompts, sip_yaml, drain, args)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


class Capture:
    """tcpdump on loopback into a pcap file, stopped with SIGINT so it flushes.

    --immediate-mode: each packet is handed over as it comes rather than in ring-buffer blocks,
    so a packet seen just before the stop is in the file even when a loaded host was slow to
    schedule tcpdump (one RTCP capture came back empty at load average 6 without it)."""

    def __init__(self, path: Path, bpf: str) -> None:
        require("tcpdump")
        self.path = path
        self.proc = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-U", "--immediate-mode", "-s", "0", "-w", str(path), bpf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 10
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if "listening on" in line:
                return
            if self.proc.poll() is not None:
                break
        raise AssertionError(f"tcpdump did not start: {line}")

    def stop(self) -> Path:
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        return self.path


@pytest.fixture
def capture(tmp_path):
    caps: list[Capture] = []

    def start(bpf: str, name: str = "cap.pcap") -> Capture:
        cap = Capture(tmp_path / name, bpf)
        caps.append(cap)
        return cap

    yield start
    for cap in caps:
        if cap.proc.poll() is None:
            cap.proc.kill()


def run_sipp(target: str, scenario: str, service: str, workdir: Path, *args: str,
             sip_port: int | None = None, media_port: int = 17000, timeout: float = 120) -> subprocess.CompletedProcess:
    require("sipp")
    cmd = ["sipp", target, "-sf", str(PEERS / "sipp" / scenario), "-s", service,
           "-i", "127.0.0.1", "-p", str(sip_port or free_udp_port()), "-mi", "127.0.0.1", "-mp", str(media_port),
           "-nostdin", "-trace_err", "-error_file", str(workdir / "sipp_err.log"),
           "-trace_stat", "-stf", str(workdir / "sipp_stats.csv"), *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)


def sipp_counts(workdir: Path) -> dict[str, int]:
    """The cumulative counters of the last line of SIPp's statistics file."""
    lines = (workdir / "sipp_stats.csv").read_text().strip().splitlines()
    head = lines[0].split(";")
    last = lines[-1].split(";")
    return {h: int(v) for h, v in zip(head, last) if h.endswith("(C)") and v.strip().isdigit()}
