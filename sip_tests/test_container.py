"""The CPU image, built here with podman from Debian's packages and run with host networking.

Built by deploy/build-local.sh (a debootstrap minbase base image, cached under
~/.cache/sip-tts, and a wheelhouse from this machine's pip), then: /health and
the image's HEALTHCHECK answer; SIPp calls it and hears what `sip-tts say`
renders; SIGTERM during a call lets the call finish and the container exit 0.
The build needs the network (Debian mirror, package index) and the container shares
the test's network namespace (`--network host`): run this file in the host's namespace
(not under `unshare --net`); every port it uses is picked free at run time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest

from engine.audio import decode_g711
from sip_tests.conftest import PEERS, ROOT, Capture, free_udp_port, require, sipp_counts
from sip_tests.pcap import read_udp
from sip_tests.test_redis_cache import free_tcp_port

pytestmark = pytest.mark.timeout(900)
IMAGE = "localhost/sip-tts:cpu-test"


def podman_cmd() -> list[str]:
    return ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]


def ulimits() -> list[str]:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    nproc = int(Path("/proc/sys/kernel/pid_max").read_text())
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def free_udp_range(n: int = 20) -> int:
    """The first of ``n`` consecutive UDP ports free on 127.0.0.1 now (the container's RTP range)."""
    import random
    import socket

    for _ in range(200):
        start = random.randrange(32000, 60000, 2)
        socks = []
        try:
            for port in range(start, start + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free UDP port range")


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None or shutil.which("debootstrap") is None:
        pytest.skip("podman/debootstrap are not installed (Debian: sip_tests/peers/debs-fleet.txt); "
                    "the container image cannot be built here")
    t0 = time.monotonic()
    res = subprocess.run(["sh", str(ROOT / "deploy" / "build-local.sh"), IMAGE], cwd=ROOT, capture_output=True,
                         text=True, timeout=840, env={**os.environ, "PYTHON": sys.executable})
    assert res.returncode == 0, f"image build failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    size = subprocess.run(podman_cmd() + ["image", "inspect", IMAGE, "--format", "{{.Size}}"],
                          capture_output=True, text=True).stdout.strip()
    print(f"\nimage {IMAGE}: built in {time.monotonic() - t0:.0f} s, {int(size) / 1e6:.0f} MB")
    return IMAGE


def health(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode().strip()


PROMPTS = """
routes:
  "1000": "Thank you for calling the container. Goodbye."
  "3000": "This announcement is long enough to still be playing when the container is told to stop. It goes on for a few more words, and then it ends."
"""


def sipp(port: int, number: str, workdir: Path, media_port: int) -> subprocess.Popen:
    workdir.mkdir(exist_ok=True)
    return subprocess.Popen(
        [require("sipp"), f"127.0.0.1:{port}", "-sf", str(PEERS / "sipp" / "uac_pcmu_wait_bye.xml"), "-s", number,
         "-i", "127.0.0.1", "-p", str(free_udp_port()), "-mi", "127.0.0.1", "-mp", str(media_port), "-m", "1",
         "-nostdin", "-recv_timeout", "30000", "-trace_stat", "-stf", str(workdir / "sipp_stats.csv")],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def heard(pcap: Path, media_port: int) -> np.ndarray:
    payloads = [p.payload[12:] for p in read_udp(pcap) if p.dst[1] == media_port and len(p.payload) > 12]
    return decode_g711(b"".join(payloads), "PCMU").astype(np.float32)


def best_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Peak normalised cross-correlation of b over the placements of b within a."""
    a = (a - a.mean()).astype(np.float64)
    b = (b - b.mean()).astype(np.float64)
    if len(a) < len(b):
        a = np.pad(a, (0, len(b) - len(a)))
    corr = np.correlate(a, b, "valid")
    energy = np.convolve(a * a, np.ones(len(b)), "valid")  # of a under each placement of b
    return float(np.max(corr / np.sqrt(np.maximum(energy, 1e-9) * (b * b).sum())))


class Instance:
    """A sip-tts container on the host's network, with its own ports, started and ready."""

    def __init__(self, image: str, tmp_path: Path) -> None:
        self.port, self.mport = free_udp_port(), free_tcp_port()
        rtp = free_udp_range()
        cfg = tmp_path / f"etc-{self.port}"
        cfg.mkdir()
        (cfg / "prompts.yaml").write_text(PROMPTS)
        (cfg / "server.yaml").write_text(
            f"sip:\n  listen: 127.0.0.1:{self.port}\n  advertised_address: 127.0.0.1\n"
            f"rtp:\n  port_min: {rtp}\n  port_max: {rtp + 19}\nprompts: prompts.yaml\n"
            f"metrics:\n  listen: 127.0.0.1:{self.mport}\ndrain_timeout_s: 30\n"
            f"api:\n  listen: 127.0.0.1:{free_tcp_port()}\n")  # the host's network: not 8080
        cfg.chmod(0o755)
        for f in cfg.iterdir():
            f.chmod(0o644)
        self.cfg = cfg
        self.name = f"sip-tts-test-{self.port}"
        t0 = time.monotonic()
        run = subprocess.run(podman_cmd() + ["run", "-d", "--name", self.name, "--network", "host", *ulimits(),
                                             "--health-interval", "disable",
                                             "-e", f"SIP_TTS_HEALTH_URL=http://127.0.0.1:{self.mport}/health",
                                             "-v", f"{cfg}:/etc/sip-tts:ro", image],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if health(self.mport) == (200, "ready"):
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            logs = subprocess.run(podman_cmd() + ["logs", self.name], capture_output=True, text=True)
            logs = logs.stdout + logs.stderr
            self.remove()
            raise AssertionError(f"the container never became ready:\n{logs[-3000:]}")
        self.ready_s = time.monotonic() - t0

    def remove(self) -> None:
        subprocess.run(podman_cmd() + ["rm", "-f", "-t", "0", self.name], capture_output=True)


def test_container_serves_calls_answers_health_and_drains_on_sigterm(image, tmp_path):
    media = free_udp_port()
    inst = Instance(image, tmp_path)
    port, mport, name, cfg = inst.port, inst.mport, inst.name, inst.cfg
    try:
        ready_s = inst.ready_s
        print(f"\ncontainer start to ready (/health 200): {ready_s:.2f} s")
        check = subprocess.run(podman_cmd() + ["healthcheck", "run", name], capture_output=True, text=True)
        assert check.returncode == 0, f"HEALTHCHECK failed: {check.stdout} {check.stderr}"
        user = subprocess.run(podman_cmd() + ["top", name, "user", "comm"], capture_output=True, text=True).stdout
        assert "sip-tts" in user and "root" not in user.split("\n", 1)[1], f"runs as non-root:\n{user}"

        # A call: what SIPp hears is what `sip-tts say` renders on this host.
        cap = Capture(tmp_path / "call.pcap", f"udp and dst port {media}")
        call = sipp(port, "1000", tmp_path / "c1", media)
        out, _ = call.communicate(timeout=60)
        cap.stop()
        assert call.returncode == 0, out[-2000:]
        say = subprocess.run([sys.executable, "-m", "sip_tts.cli", "say", "--route", "1000", "--config",
                              str(cfg / "server.yaml"), "--out", str(tmp_path / "say.wav")],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert say.returncode == 0, say.stderr
        with wave.open(str(tmp_path / "say.wav")) as w:
            ref = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32)
        got = heard(cap.path, media)
        assert len(got) >= len(ref) * 0.95, f"heard {len(got) / 8000:.2f} s of {len(ref) / 8000:.2f} s"
        corr = best_correlation(got, ref)
        print(f"correlation with `sip-tts say`: {corr:.3f}")
        assert corr > 0.9

        # SIGTERM during a call: health turns to draining, the call plays to its end, exit 0.
        cap = Capture(tmp_path / "drain.pcap", f"udp and dst port {media}")
        call = sipp(port, "3000", tmp_path / "c2", media)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and health(mport)[0] == 200 and \
                "sip_tts_calls_active 1.0" not in urllib.request.urlopen(
                    f"http://127.0.0.1:{mport}/metrics", timeout=2).read().decode():
            time.sleep(0.05)
        time.sleep(1.0)
        term_at = time.time()
        subprocess.run(podman_cmd() + ["kill", "--signal", "TERM", name], check=True, capture_output=True)
        time.sleep(0.3)
        assert health(mport) == (503, "draining")
        out, _ = call.communicate(timeout=60)
        cap.stop()
        assert call.returncode == 0, out[-2000:]
        assert sipp_counts(tmp_path / "c2")["SuccessfulCall(C)"] == 1
        last = max(p.time for p in read_udp(cap.path) if p.dst[1] == media)
        assert last - term_at > 2, f"the call played on after SIGTERM ({last - term_at:.1f} s)"
        wait = subprocess.run(podman_cmd() + ["wait", name], capture_output=True, text=True, timeout=60)
        assert wait.stdout.strip() == "0", f"exit code {wait.stdout!r} {wait.stderr}"
    finally:
        inst.remove()


@pytest.fixture(scope="module")
def kamailio_image(image) -> str:
    """deploy/Containerfile.kamailio on the base image build-local.sh made."""
    tag = "localhost/sip-tts-kamailio:test"
    res = subprocess.run(podman_cmd() + ["build", "--network", "host", *ulimits(), "--format", "docker",
                                         "--build-arg", "BASE=localhost/sip-tts-base:bookworm",
                                         "-f", "deploy/Containerfile.kamailio", "-t", tag, "."],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return tag


def test_kamailio_container_routes_calls_to_the_sip_tts_container(image, kamailio_image, tmp_path):
    """The compose file's front: our Kamailio image with its dispatcher list, the CPU image behind it."""
    inst = Instance(image, tmp_path)
    kport, media = free_udp_port(), free_udp_port()
    listed = tmp_path / "dispatcher.list"
    listed.write_text(f"1 sip:127.0.0.1:{inst.port} 0 0\n")
    listed.chmod(0o644)
    name = f"kamailio-test-{kport}"
    try:
        run = subprocess.run(podman_cmd() + ["run", "-d", "--name", name, "--network", "host", *ulimits(),
                                             "-v", f"{listed}:/etc/kamailio/dispatcher.list:ro", kamailio_image,
                                             "-l", f"udp:127.0.0.1:{kport}", "-A", "DS_PING_INTERVAL=1"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        time.sleep(3)  # the first OPTIONS probe marks the instance up
        call = sipp(kport, "1000", tmp_path / "via-kamailio", media)
        out, _ = call.communicate(timeout=60)
        logs = subprocess.run(podman_cmd() + ["logs", name], capture_output=True, text=True)
        assert call.returncode == 0, f"{out[-1500:]}\n{(logs.stdout + logs.stderr)[-2000:]}"
        assert sipp_counts(tmp_path / "via-kamailio")["SuccessfulCall(C)"] == 1
        text = urllib.request.urlopen(f"http://127.0.0.1:{inst.mport}/metrics", timeout=3).read().decode()
        assert 'sip_tts_calls_total{outcome="prompt-done"} 1.0' in text, "the call reached the instance"
    finally:
        subprocess.run(podman_cmd() + ["rm", "-f", "-t", "0", name], capture_output=True)
        inst.remove()
