"""The fleet's shared cache with a real redis-server (started here), real instances and SIPp.

Instance A renders the fixed prompts into Redis; instance B, started after it with
prompt warming off and an empty local cache, plays them from Redis without
rendering; Redis killed (or stopped) mid-test never fails a call and comes back by
itself; a corrupted or foreign-format entry is ignored, never played.
Run inside a network namespace (see the README's Tests section).
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from engine.shared_cache import FORMAT, pack, unpack
from sip_tests.conftest import PROMPTS, free_udp_port, run_sipp, sipp_counts
from sip_tests.pcap import read_udp

pytestmark = pytest.mark.timeout(180)
FIRST_PACKET_LIMIT = 0.025  # ACK -> first audible RTP packet on the wire, Redis hit (issue 21)


class Redis:
    """A redis-server of our own on loopback, no persistence; a minimal RESP client for the checks."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed: run `make test` (sip_tests/peers/debs-fleet.txt)")
        self.port = port or free_tcp_port()
        self.workdir = workdir
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(workdir)],
                                     stdout=open(workdir / f"redis-{self.port}.log", "a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.cmd("PING") == "PONG":
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cmd(self, *args: str | bytes) -> object:
        with socket.create_connection(("127.0.0.1", self.port), timeout=3) as s:
            parts = [a.encode() if isinstance(a, str) else a for a in args]
            s.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
            return _read_resp(s.makefile("rb"))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(10)


def _read_resp(f) -> object:
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind in (b"+", b"-"):
        return rest.decode()
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        return [_read_resp(f) for _ in range(int(rest))]
    raise AssertionError(f"bad RESP reply {line!r}")


def free_tcp_port() -> int:
    """A free TCP port below the ephemeral range: the instances' SIP ports come from that range
    (picked free for UDP only, then also bound for TCP), so ours can never be one of them."""
    for _ in range(100):
        port = random.randrange(12000, 17000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free TCP port")


@pytest.fixture
def redis_server(tmp_path):
    servers: list[Redis] = []

    def start(port: int | None = None) -> Redis:
        r = Redis(tmp_path, port)
        servers.append(r)
        return r

    yield start
    for r in servers:
        r.stop()


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def server_yaml(redis_url: str, mport: int, timeout_ms: int = 20) -> str:
    return (f"metrics:\n  listen: 127.0.0.1:{mport}\n"
            f"cache:\n  redis_url: {redis_url}\n  timeout_ms: {timeout_ms}\n")


COLD = PROMPTS + "cache:\n  warm: false\n"  # no rendering at start-up: only calls fill the cache
SHORT = """
routes:
  "1": "One."
  "2": "Two."
  "3": "Three."
default: "Not in service."
cache:
  warm: false
"""


def wait_for(cond, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def call(srv, number: str, workdir: Path, media_port: int) -> None:
    """One SIPp call that the server ends with BYE after its prompt."""
    workdir.mkdir(exist_ok=True)
    res = run_sipp(srv.uri_host, "uac_pcmu_wait_bye.xml", number, workdir, "-m", "1", "-recv_timeout", "20000",
                   media_port=media_port, timeout=60)
    assert res.returncode == 0, f"{res.stdout[-1500:]}\n{res.stderr[-1500:]}\n{srv.log_text()[-2000:]}"
    assert sipp_counts(workdir)["SuccessfulCall(C)"] == 1


def stored_prompts(r: Redis) -> dict[bytes, bytes]:
    keys = r.cmd("KEYS", "sip-tts:*:prompt:*")
    assert isinstance(keys, list)
    return {k: r.cmd("GET", k) for k in keys}


FLEET = """
routes:
  "11": "Eleven."
  "12": "Twelve."
  "13": "Thirteen."
"""


def prompt_start(packets, start: float, end: float, media_port: int, entries) -> tuple[float, bytes]:
    """When the call's prompt began on the wire (its first audible packet minus the frames of silence
    the engine put before it: those are the same bytes as the idle silence), and what it played."""
    mine = [p for p in packets if start <= p.time < end and p.dst[1] == media_port]
    played = b"".join(p.payload[12:] for p in mine)
    first = next(p for p in mine if p.payload[12:].strip(b"\xff\x7f"))
    for e in entries:
        frames = [e[i:i + 160] for i in range(0, len(e), 160)]
        k = next(i for i, f in enumerate(frames) if f.strip(b"\xff\x7f"))
        if frames[k] == first.payload[12:] and e[k * 160:] in played:
            return first.time - k * 0.020 - start, e
    raise AssertionError("the call did not play any of A's renders")


def test_instance_b_plays_from_redis_what_instance_a_rendered(redis_server, start_server, capture, tmp_path):
    r = redis_server()
    ma, mb, mc = free_tcp_port(), free_tcp_port(), free_tcp_port()
    a = start_server(extra_yaml=server_yaml(r.url, ma), prompts=FLEET)  # warms: renders each prompt into Redis
    # Warm-up is background work (calls first): on a loaded 2-core host it took over 30 s once.
    wait_for(lambda: r.cmd("DBSIZE") == 6, timeout=120, what=f"A's 3 prompts x 2 codecs in Redis (keys: {r.cmd('DBSIZE')})")
    entries = [unpack(v) for v in stored_prompts(r).values()]
    assert all(v and len(v) % 160 == 0 for v in entries), "entries carry our header and whole frames"
    a.stop()

    disk = tmp_path / "disk-cache"
    cold_disk = FLEET + f"cache:\n  warm: false\n  dir: {disk}\n"
    # SIPp's media port and every ACK (payload "ACK "), whichever instance it goes to
    cap = capture("udp and (dst port 17300 or udp[8:4] = 0x41434b20)")
    b = start_server(extra_yaml=server_yaml(r.url, mb), prompts=cold_disk)
    paths = []
    for n in ("11", "12", "13"):  # local misses -> Redis hits (kept in memory and on disk)
        call(b, n, tmp_path / f"redis{n}", 17300)
        paths.append("redis")
    m = metrics(mb)
    assert m["sip_tts_prompt_cache_misses_total"] == 0, "B rendered nothing"
    assert m["sip_tts_shared_cache_hits_total"] == 3 and m["sip_tts_prompt_cache_hits_total"] == 3
    b.stop()
    b2 = start_server(extra_yaml=server_yaml(r.url, mb), prompts=cold_disk)  # same disk, empty memory
    for kind in ("disk", "memory"):
        for n in ("11", "12", "13"):
            call(b2, n, tmp_path / f"{kind}{n}", 17300)
            paths.append(kind)
    cap.stop()
    assert metrics(mb)["sip_tts_shared_cache_hits_total"] == 0, "the disk came first"

    packets = read_udp(cap.path)
    acks = [p.time for p in packets if p.payload.startswith(b"ACK ")]
    assert len(acks) == len(paths)
    starts: dict[str, list[float]] = {"redis": [], "disk": [], "memory": []}
    for kind, start, end in zip(paths, acks, acks[1:] + [float("inf")]):
        t, _ = prompt_start(packets, start, end, 17300, entries)  # plays A's frames, byte for byte
        starts[kind].append(t * 1000)
    print("\nprompt's first packet after the ACK (ms, on the wire): "
          + ", ".join(f"{k} {' / '.join(f'{x:.1f}' for x in v)}" for k, v in starts.items()))
    # Issue 21: <= 25 ms from Redis (the pacer's 20 ms slot grid included). A loaded CI host may
    # delay one call: the median must meet it, each call within a stated margin (60 ms).
    assert sorted(starts["redis"])[1] <= FIRST_PACKET_LIMIT * 1000, starts
    assert max(starts["redis"]) <= 60, starts

    # A third instance that warms: fills its local cache from Redis, renders nothing.
    c = start_server(extra_yaml=server_yaml(r.url, mc), prompts=FLEET)
    wait_for(lambda: "prompt cache:" in c.log_text(), what="C's warm-up")
    assert "0 prompts rendered, 6 cached" in c.log_text()


def test_redis_killed_calls_still_play_errors_counted_and_it_comes_back(redis_server, start_server, tmp_path):
    r = redis_server()
    mport = free_tcp_port()
    srv = start_server(extra_yaml=server_yaml(r.url, mport), prompts=SHORT)
    call(srv, "2", tmp_path / "c1", 17400)
    wait_for(lambda: r.cmd("DBSIZE") == 1, what="the rendered prompt written to Redis")

    r.kill()
    for i, number in enumerate(("1", "3")):  # rendered locally; Redis is not waited for
        call(srv, number, tmp_path / f"down{i}", 17400)
    m = metrics(mport)
    assert m["sip_tts_shared_cache_errors_total"] >= 1
    assert m["sip_tts_shared_cache_up"] == 0
    assert m["sip_tts_prompt_cache_misses_total"] == 3
    assert srv.log_text().count("unavailable") == 1, "one log line while Redis is down"

    r2 = redis_server(r.port)  # back on the same port, empty: the prober finds it with no traffic
    wait_for(lambda: metrics(mport)["sip_tts_shared_cache_up"] == 1, timeout=20, what="recovery")
    wait_for(lambda: "answers again" in srv.log_text(), timeout=5, what="the recovery log line")
    call(srv, "9999", tmp_path / "after", 17400)  # a prompt never played: rendered, written to the new Redis
    wait_for(lambda: r2.cmd("DBSIZE") == 1, what="the write after recovery")

    def reload(text: str) -> None:
        mark = srv.log_text().count("reloaded")
        (srv.workdir / "prompts.yaml").write_text(text)
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: srv.log_text().count("reloaded") > mark, what="reload")

    # Full Redis (maxmemory reached under noeviction): the write is refused, counted, logged once; calls play.
    r2.cmd("CONFIG", "SET", "maxmemory-policy", "noeviction")
    r2.cmd("CONFIG", "SET", "maxmemory", "1")
    reload(SHORT.replace("Two.", "Two again."))
    before = metrics(mport)["sip_tts_shared_cache_errors_total"]
    call(srv, "2", tmp_path / "full", 17400)  # a new prompt: rendered, its write refused
    wait_for(lambda: "refuses writes" in srv.log_text(), what="the refused write")
    m = metrics(mport)
    assert m["sip_tts_shared_cache_errors_total"] > before and m["sip_tts_shared_cache_up"] == 1
    assert r2.cmd("DBSIZE") == 1

    # Slow Redis (stopped: connections hang): the lookup gives up after timeout_ms, the call plays,
    # the circuit opens, and closes by itself once Redis runs again.
    reload(SHORT.replace("Two.", "Two once more."))
    r2.proc.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    call(srv, "2", tmp_path / "slow", 17400)  # a local miss: the Redis lookup times out, then it renders
    assert time.monotonic() - t0 < 30
    wait_for(lambda: metrics(mport)["sip_tts_shared_cache_up"] == 0, timeout=10, what="the circuit to open")
    r2.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: metrics(mport)["sip_tts_shared_cache_up"] == 1, timeout=30, what="recovery after SIGCONT")
    assert srv.log_text().count("unavailable") == 2, "one warning per outage"


def test_corrupted_or_foreign_version_entry_is_ignored(redis_server, start_server, capture, tmp_path):
    r = redis_server()
    a = start_server(extra_yaml=server_yaml(r.url, free_tcp_port()))
    wait_for(lambda: r.cmd("DBSIZE") == 8, what="A's prompts in Redis")
    a.stop()
    good = {k: unpack(v) for k, v in stored_prompts(r).items()}
    for i, (key, payload) in enumerate(good.items()):
        assert payload is not None
        if i % 2:  # a flipped byte in the audio
            blob = bytearray(pack(payload))
            blob[-100] ^= 0x55
            r.cmd("SET", key, bytes(blob))
        else:      # another format version with audio that must never be played
            r.cmd("SET", key, pack(b"\x00" * len(payload), version=FORMAT + 1))

    mport = free_tcp_port()
    b = start_server(extra_yaml=server_yaml(r.url, mport), prompts=COLD)
    cap = capture("udp and dst host 127.0.0.1 and dst port 17500")
    call(b, "1000", tmp_path / "c1", 17500)
    call(b, "2000", tmp_path / "c2", 17500)
    cap.stop()
    m = metrics(mport)
    assert m["sip_tts_shared_cache_rejected_total"] == 2
    assert m["sip_tts_shared_cache_hits_total"] == 0
    assert m["sip_tts_prompt_cache_misses_total"] == 2, "both rendered locally"
    payloads = [p.payload[12:] for p in read_udp(cap.path)]
    played = b"".join(payloads)
    assert sum(1 for p in payloads if p == b"\x00" * 160) == 0, "the foreign entry's audio was not played"
    assert sum(1 for p in payloads if p.strip(b"\xff\x7f")) > 50, "the calls heard speech"
    assert played
