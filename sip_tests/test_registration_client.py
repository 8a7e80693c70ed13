"""The server registers at a real registrar (SIPp with digest verification) and refreshes in time."""

import subprocess
import time
from pathlib import Path

from .conftest import free_udp_port

SCENARIO = Path(__file__).parent / "scenarios" / "registrar_digest.xml"


def test_registers_with_digest_and_refreshes_before_expiry(start_server, tmp_path):
    port = free_udp_port()
    registrar = subprocess.Popen(
        ["sipp", "-sf", str(SCENARIO), "-i", "127.0.0.1", "-p", str(port), "-m", "1", "-nostdin",
         "-trace_stat", "-stf", str(tmp_path / "stats.csv"), "-trace_msg", "-message_file", str(tmp_path / "msg.log")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.5)
    srv = start_server(extra_yaml=f"register:\n  registrar: sip:127.0.0.1:{port}\n  aor: sip:1000@pbx.test\n"
                                  f"  username: '1000'\n  password: pw\n  expires: 60\n")
    out, _ = registrar.communicate(timeout=30)
    assert registrar.returncode == 0, out[-2000:] + srv.log_text()[-2000:]
    log = (tmp_path / "msg.log").read_text()
    assert log.count("REGISTER sip:127.0.0.1") == 3  # challenge, credentials, refresh
    assert 'Authorization: Digest username="1000", realm="pbx.test"' in log
    # The registrar exits on sending the refresh's 200; the server logs it a moment later (its log
    # writer is a thread): poll for it with a wide margin instead of reading the log at once.
    deadline = time.monotonic() + 15
    while srv.log_text().count("registered sip:1000@pbx.test") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert srv.log_text().count("registered sip:1000@pbx.test") >= 2, srv.log_text()[-2000:]
