"""Digest authentication of INVITEs against SIPp's own digest client (MD5).

What came back is read from SIPp's message trace (``-trace_msg``), not inferred from its exit
status: a SIPp run fails for many reasons (a timeout, a port in use), and only the 401 to the
credentials proves the server refused them.
"""

import re
import subprocess
from pathlib import Path

from .conftest import free_udp_port

SCENARIO = Path(__file__).parent / "scenarios" / "uac_auth_wait_bye.xml"
AUTH = "auth:\n  realm: sip-tts\n  users: {pbx: s3cret}\n  algorithms: [MD5]\n"


def sipp_auth(srv, tmp_path, password: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sipp", srv.uri_host, "-sf", str(SCENARIO), "-s", "2000", "-i", "127.0.0.1", "-p", str(free_udp_port()),
         "-mi", "127.0.0.1", "-mp", "18000", "-m", "2", "-nostdin", "-recv_timeout", "8000",
         "-au", "pbx", "-ap", password, "-trace_msg", "-message_file", str(tmp_path / "msg.log")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)


def received(tmp_path) -> set[tuple[str, int, int]]:
    """(Call-ID, CSeq number, status) of every response SIPp received (retransmissions once)."""
    out = set()
    for block in (tmp_path / "msg.log").read_text().split("message received")[1:]:
        status = re.search(r"^SIP/2\.0 (\d{3}) ", block, re.M)
        call_id = re.search(r"^Call-ID:\s*(\S+)", block, re.M | re.I)
        cseq = re.search(r"^CSeq:\s*(\d+) INVITE", block, re.M | re.I)
        if status and call_id and cseq:
            out.add((call_id.group(1), int(cseq.group(1)), int(status.group(1))))
    return out


def sent_authorizations(tmp_path) -> list[str]:
    return re.findall(r"^Authorization: (Digest .*)$", (tmp_path / "msg.log").read_text(), re.M)


def test_sipp_with_the_right_password_gets_in(start_server, tmp_path):
    srv = start_server(extra_yaml=AUTH)
    res = sipp_auth(srv, tmp_path, "s3cret")
    assert res.returncode == 0, res.stdout[-2000:]
    got = received(tmp_path)
    calls = {c for c, _, _ in got}
    assert len(calls) == 2
    for call in calls:  # each call: challenged (401) without credentials, admitted (200) with them
        assert (call, 1, 401) in got and (call, 2, 200) in got, sorted(got)
    assert all('algorithm=MD5' in a and 'username="pbx"' in a for a in sent_authorizations(tmp_path))
    assert srv.log_text().count("ended: prompt-done") == 2


def test_sipp_with_a_wrong_password_is_refused(start_server, tmp_path):
    srv = start_server(extra_yaml=AUTH)
    res = sipp_auth(srv, tmp_path, "wrong")
    assert res.returncode != 0
    got = received(tmp_path)
    assert got, "SIPp received nothing: " + res.stdout[-2000:]
    authorised = [call for call, cseq, status in got if cseq == 2]
    assert authorised, "SIPp never sent its credentials: " + res.stdout[-2000:]
    for call in authorised:  # the INVITE with the wrong credentials was answered 401 (or 403), never 2xx
        finals = {status for c, cseq, status in got if c == call and cseq == 2 and status >= 200}
        assert finals and finals <= {401, 403}, sorted(got)
    assert sent_authorizations(tmp_path)  # it did answer the challenge
    assert "ended:" not in srv.log_text()
