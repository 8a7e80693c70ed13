"""The systemd template unit verifies, and the server speaks the notify protocol with a watchdog."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.sipmsg import request

from .conftest import ROOT, free_udp_port
from .raw_caller import answered_rtp_port, dial, to_tag


def test_template_unit_passes_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze missing (Debian package systemd)")
    unit = (ROOT / "systemd" / "sip-tts@.service").read_text()
    # As installed, ExecStart is /opt/sip-tts/...; verify against this checkout's venv instead,
    # with the per-instance env file optional (it is created at install time).
    unit = unit.replace("/opt/sip-tts/.venv/bin/sip-tts", str(ROOT / ".venv" / "bin" / "sip-tts"))
    unit = unit.replace("EnvironmentFile=/etc/sip-tts/%i.env", "EnvironmentFile=-/etc/sip-tts/%i.env")
    (tmp_path / "sip-tts@0.service").write_text(unit)
    res = subprocess.run([tool, "verify", str(tmp_path / "sip-tts@0.service")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "DynamicUser=yes" in unit


def test_notify_ready_watchdog_stopping_and_per_instance_rtp_range(tmp_path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    notify.bind(path)
    notify.settimeout(10)
    port = free_udp_port()
    (tmp_path / "prompts.yaml").write_text('default: "Hello."\n')
    (tmp_path / "server.yaml").write_text("prompts: prompts.yaml\ndrain_timeout_s: 2\n")
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
    api_port = free_udp_port()  # the unit passes each instance its own HTTP port (API_LISTEN)
    proc = subprocess.Popen([sys.executable, "-m", "sip_tts.cli", "serve", "--config", str(tmp_path / "server.yaml"),
                             "--listen", f"127.0.0.1:{port}", "--rtp-ports", "41000-41009",
                             "--api-listen", f"127.0.0.1:{api_port}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        messages = [notify.recv(4096).decode()]
        assert messages[0].startswith("READY=1")
        t0 = time.monotonic()
        pings = 0
        while pings < 3:
            if notify.recv(4096).decode() == "WATCHDOG=1":
                pings += 1
        assert time.monotonic() - t0 < 1.5  # every 0.2 s: half of WATCHDOG_USEC
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(3)
        ok = dial(s, port, "unit-1", 18700)
        assert 41000 <= answered_rtp_port(ok) <= 41009  # --rtp-ports, as the unit passes it
        tag = to_tag(ok)
        s.sendto(request("ACK", call_id="unit-1", cseq=1, to_tag=tag), ("127.0.0.1", port))
        s.sendto(request("BYE", call_id="unit-1", cseq=2, to_tag=tag), ("127.0.0.1", port))
        s.close()
        proc.send_signal(signal.SIGTERM)
        while True:
            m = notify.recv(4096).decode()
            if m.startswith("STOPPING=1"):
                break
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
