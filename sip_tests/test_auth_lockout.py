"""Online password guessing against the running server, by a Python client computing real digests.

It reproduces the brute force of issue 19 (wrong passwords for one user from one address
as fast as the server answers), and shows the lockout after the threshold, the PBX calling
from another address still authenticated during it, one log line and the /metrics counter
for the lockout, and its expiry. The window and lockout are seconds here, minutes by default.
Run inside a network namespace (the PBX's address is 127.0.0.2).
"""

import socket
import time
import urllib.request

from tests.digest_client import authorized_invite, challenge_of
from tests.sipmsg import invite

from .conftest import free_udp_port
from .rfc4475_replay import _in_dialog

GUESSES = 1000
LOCKOUT_S = 10


class Client:
    def __init__(self, host: str, server_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.host, self.target, self.n = host, ("127.0.0.1", server_port), 0
        self.sent_by = f"{host}:{self.sock.getsockname()[1]}"

    def final(self, call_id: str, timeout: float = 10.0) -> bytes | None:
        """The final response for ``call_id``; a non-2xx one is ACKed, as a real caller does."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535)
            except socket.timeout:
                return None
            if not data.startswith(b"SIP/2.0 ") or int(data.split(b" ", 2)[1]) < 200:
                continue
            if header(data, "CSeq").endswith("INVITE") and int(data.split(b" ", 2)[1]) >= 300:
                self.sock.sendto(ack_for(data), self.target)
            if header(data, "Call-ID") == call_id:
                return data
        return None

    def attempt(self, password: str, timeout: float = 10.0) -> int | None:
        """One guess: INVITE, and if challenged, the INVITE with the digest of ``password``. The final status."""
        self.n += 1
        call_id = f"lockout-{self.host}-{self.n}-{time.monotonic_ns()}"
        self.sock.sendto(invite(call_id=call_id, user="2000", host=self.host, via_host=self.sent_by), self.target)
        first = self.final(call_id, timeout)
        if first is None or not first.startswith(b"SIP/2.0 401 "):
            return None if first is None else int(first.split(b" ", 2)[1])
        self.sock.sendto(authorized_invite(challenge_of(first), "pbx", password, call_id, host=self.host,
                                           via_host=self.sent_by), self.target)
        answer = self.final(call_id, timeout)
        if answer is None:
            return None
        status = int(answer.split(b" ", 2)[1])
        if status == 200:  # a call: end it
            self.sock.sendto(_in_dialog("ACK", answer, "UDP", self.sent_by, 0), self.target)
            self.sock.sendto(_in_dialog("BYE", answer, "UDP", self.sent_by, 1), self.target)
        return status


def header(resp: bytes, name: str) -> str:
    for line in resp.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return ""


def ack_for(resp: bytes) -> bytes:
    """The ACK of a non-2xx final response: same branch (its Via), the To-tag it set (RFC 3261 §17.1.1.3)."""
    number = header(resp, "CSeq").split()[0]
    return (f"ACK sip:2000@192.0.2.1:5060 SIP/2.0\r\nVia: {header(resp, 'Via')}\r\nMax-Forwards: 70\r\n"
            f"From: {header(resp, 'From')}\r\nTo: {header(resp, 'To')}\r\nCall-ID: {header(resp, 'Call-ID')}\r\n"
            f"CSeq: {number} ACK\r\nContent-Length: 0\r\n\r\n").encode()


def metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_brute_force_is_locked_out_the_pbx_is_not_and_the_lockout_expires(start_server):
    metrics_port = free_udp_port()
    srv = start_server(extra_yaml=(
        "auth:\n  realm: sip-tts\n  users: {pbx: s3cret}\n  algorithms: [MD5]\n  max_failures: 10\n"
        f"  failure_window_s: 60\n  lockout_s: {LOCKOUT_S}\n"
        f"metrics:\n  listen: 127.0.0.1:{metrics_port}\n"))
    attacker, pbx = Client("127.0.0.1", srv.port), Client("127.0.0.2", srv.port)

    t0 = time.monotonic()
    got = [attacker.attempt(f"guess{i}", timeout=5) for i in range(GUESSES)]
    flood_s = time.monotonic() - t0
    print(f"\n{GUESSES} guesses in {flood_s:.2f} s ({GUESSES / flood_s:.0f}/s): "
          f"{got.count(401)} x 401, {got.count(403)} x 403, {got.count(200)} x 200, {got.count(None)} unanswered")
    assert flood_s < LOCKOUT_S, "the flood outlasted the lockout: the test cannot tell lockout from expiry"
    assert got[:10] == [401] * 10  # max_failures wrong answers are merely refused
    assert got[10:] == [403] * (GUESSES - 10)  # the 11th locks the source: every request then gets 403
    assert attacker.attempt("s3cret") == 403  # locked out: even the right password
    assert pbx.attempt("s3cret") == 200  # the PBX from another address: authenticated during the lockout
    assert metric(metrics_port, "sip_tts_auth_lockouts_total") == 1
    assert metric(metrics_port, "sip_tts_auth_failures_total") == 11
    time.sleep(max(0.0, LOCKOUT_S + 1 - (time.monotonic() - t0)))
    assert attacker.attempt("s3cret") == 200  # the lockout expired on its own
    log = srv.log_text()
    assert log.count("locked out 127.0.0.1") == 1, log[-2000:]
    assert "'pbx'" in log
