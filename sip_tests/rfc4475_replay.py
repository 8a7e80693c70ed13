"""Replay the 49 RFC 4475 messages, byte for byte, to a running server; print the result as JSON.

Run by ``test_rfc4475_replay.py`` inside its own network namespace (loopback only): the
messages name hosts in 192.0.2.0/24 and elsewhere, and an answered INVITE leads to RTP
towards its SDP, which must reach no real network. Usage::

    unshare --net sh -c 'ip link set lo up; python -m sip_tests.rfc4475_replay WORKDIR'
"""

from __future__ import annotations

import json
import secrets
import socket
import sys
import time
from pathlib import Path

from telephony.sip.message import frame_length
from tests.rfc4475 import CASES, Case

from .conftest import _start_server, run_sipp, sipp_counts

FINAL_WAIT_S = 15.0  # wide: the 200 of an INVITE waits for the RTP socket and synthesis to start
DROP_WAIT_S = 1.0  # nothing may come back within this (loopback answers take milliseconds)


def _status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def _header(resp: bytes, name: bytes) -> bytes:
    for line in resp.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    raise KeyError(name)


def _in_dialog(method: str, ok: bytes, transport: str, sent_by: str, cseq_step: int) -> bytes:
    """ACK or BYE for the 200 ``ok`` we got to a replayed INVITE (it names the dialog)."""
    contact = _header(ok, b"Contact").decode()
    target = contact[contact.index("<") + 1:contact.index(">")]
    number = int(_header(ok, b"CSeq").split()[0]) + cseq_step
    return (f"{method} {target} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {sent_by};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: {_header(ok, b'From').decode()}\r\nTo: {_header(ok, b'To').decode()}\r\n"
            f"Call-ID: {_header(ok, b'Call-ID').decode()}\r\nCSeq: {number} {method}\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def replay_udp(case: Case, port: int) -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    target = ("127.0.0.1", port)
    try:
        s.sendto(case.data, target)
        final = _await_final(lambda t: _recv_udp(s, t), DROP_WAIT_S if case.udp == "drop" else FINAL_WAIT_S)
        if final is None:
            return "drop"
        if _status(final) == 200 and b"INVITE" in _header(final, b"CSeq"):
            sent_by = "127.0.0.1:%d" % s.getsockname()[1]
            s.sendto(_in_dialog("ACK", final, "UDP", sent_by, 0), target)
            s.sendto(_in_dialog("BYE", final, "UDP", sent_by, 1), target)
            bye = _await_final(lambda t: _recv_udp(s, t), FINAL_WAIT_S, b"BYE")
            if bye is None or _status(bye) != 200:
                return "200 (BYE unanswered)"
        return str(_status(final))
    finally:
        s.close()


def _recv_udp(s: socket.socket, timeout: float) -> list[bytes]:
    s.settimeout(timeout)
    try:
        return [s.recv(65535)]
    except socket.timeout:
        return []


def _await_final(recv, wait: float, method: bytes | None = None) -> bytes | None:
    """The first final response (to ``method`` when given) within ``wait`` seconds, or None."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        for data in recv(left):
            if data is None:
                return None
            if not data.startswith(b"SIP/2.0 ") or _status(data) < 200:
                continue  # 100 Trying, or a request (the server's own BYE)
            if method is None or method in _header(data, b"CSeq"):
                return data
    return None


class _Stream:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        self.closed = False

    def recv(self, timeout: float) -> list[bytes | None]:
        """Framed messages that arrived within ``timeout``; None at the end marks the peer's close."""
        self.sock.settimeout(timeout)
        out: list[bytes | None] = []
        try:
            chunk = self.sock.recv(65535)
        except socket.timeout:
            return out
        except ConnectionResetError:
            chunk = b""
        self.buf += chunk
        while (n := frame_length(self.buf)) is not None:
            out.append(self.buf[:n])
            self.buf = self.buf[n:]
        if not chunk:
            self.closed = True
            out.append(None)
        return out


def replay_tcp(case: Case, port: int) -> str:
    conn = _Stream(port)
    try:
        conn.sock.sendall(case.data)
        got: list[bytes] = []

        def recv(t: float) -> list[bytes | None]:
            items = conn.recv(t)
            got.extend(i for i in items if i is not None)
            return items

        wait = DROP_WAIT_S if case.tcp == "drop" else FINAL_WAIT_S
        final = _await_final(recv, wait)
        if isinstance(case.tcp, str) and case.tcp.endswith("close"):
            deadline = time.monotonic() + FINAL_WAIT_S
            while not conn.closed and time.monotonic() < deadline:
                recv(deadline - time.monotonic())
            return (f"{_status(final)}+" if final is not None else "") + ("close" if conn.closed else "open")
        if final is None:
            return "close" if conn.closed else "drop"
        if _status(final) == 200 and b"INVITE" in _header(final, b"CSeq"):
            sent_by = "127.0.0.1:%d" % conn.sock.getsockname()[1]
            conn.sock.sendall(_in_dialog("ACK", final, "TCP", sent_by, 0) + _in_dialog("BYE", final, "TCP", sent_by, 1))
            bye = _await_final(recv, FINAL_WAIT_S, b"BYE")
            if bye is None or _status(bye) != 200:
                return "200 (BYE unanswered)"
        return str(_status(final))
    finally:
        conn.sock.close()


def main(workdir: Path) -> dict:
    """UDP on one server, TCP on a second: the same INVITE again on the first would be a merged
    request (482, RFC 3261 §8.2.2.2) while the first call's transactions live on."""
    rows = {c.name: {"name": c.name, "section": c.section, "udp": None, "tcp": None} for c in CASES}
    result: dict = {"alive_after_replay": True, "tracebacks": 0, "stop_codes": [], "log_tail": ""}
    for transport in ("udp", "tcp"):
        d = workdir / transport
        d.mkdir()
        server = _start_server(d, drain=1)
        try:
            for case in CASES:
                if transport == "udp":
                    rows[case.name]["udp"] = replay_udp(case, server.port)
                elif case.tcp is not None:
                    rows[case.name]["tcp"] = replay_tcp(case, server.port)
            result["alive_after_replay"] &= server.proc.poll() is None
            if transport == "tcp":  # and then a plain call
                sipp_dir = d / "sipp"
                sipp_dir.mkdir()
                res = run_sipp(server.uri_host, "uac_pcmu_wait_bye.xml", "2000", sipp_dir, "-m", "1",
                               "-recv_timeout", "20000", media_port=17900, timeout=90)
                result["call_after"] = sipp_counts(sipp_dir).get("SuccessfulCall(C)", 0) if res.returncode == 0 else 0
        finally:
            result["stop_codes"].append(server.stop())
        log = server.log_text()
        result["tracebacks"] += log.count("Traceback")
        result["log_tail"] += log[-1500:]
    result["rows"] = list(rows.values())
    return result


if __name__ == "__main__":
    out = main(Path(sys.argv[1]))
    print(json.dumps(out))
