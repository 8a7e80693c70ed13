"""Digest authentication of INVITEs against SIPp's own digest client (MD5)."""

import subprocess
from pathlib import Path

from .conftest import free_udp_port

SCENARIO = Path(__file__).parent / "scenarios" / "uac_auth_wait_bye.xml"
AUTH = "auth:\n  realm: sip-tts\n  users: {pbx: s3cret}\n  algorithms: [MD5]\n"


def sipp_auth(srv, tmp_path, password: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sipp", srv.uri_host, "-sf", str(SCENARIO), "-s", "2000", "-i", "127.0.0.1", "-p", str(free_udp_port()),
         "-mi", "127.0.0.1", "-mp", "18000", "-m", "2", "-nostdin", "-recv_timeout", "8000",
         "-au", "pbx", "-ap", password], cwd=tmp_path, capture_output=True, text=True, timeout=60)


def test_sipp_with_the_right_password_gets_in(start_server, tmp_path):
    srv = start_server(extra_yaml=AUTH)
    res = sipp_auth(srv, tmp_path, "s3cret")
    assert res.returncode == 0, res.stdout[-2000:]
    assert srv.log_text().count("ended: prompt-done") == 2


def test_sipp_with_a_wrong_password_is_refused(start_server, tmp_path):
    srv = start_server(extra_yaml=AUTH)
    res = sipp_auth(srv, tmp_path, "wrong")
    assert res.returncode != 0  # its authenticated INVITE got another 401
    assert "ended:" not in srv.log_text()
