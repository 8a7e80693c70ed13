"""Our digest client against a real peer that speaks SHA-256: Kamailio's auth module.

Of the SIP peers on apt here only Kamailio (5.6) does SHA-256 digest (SIPp 3.6 and baresip's
libre 1.1 compute MD5 only). Kamailio challenges our registration client with the algorithm
under test and verifies its answer with its own code; the RFC 7616 example values check the
same arithmetic from the other side (tests/test_digest_vectors.py).
"""

import os
import signal
import subprocess
import time

import pytest

from .conftest import free_udp_port, require

REGISTRAR = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
auto_aliases=no
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "auth.so"
loadmodule "textops.so"
loadmodule "xlog.so"
modparam("auth", "algorithm", "{algorithm}")
request_route {{
    if (!is_method("REGISTER")) {{ sl_send_reply("405", "Method Not Allowed"); exit; }}
    if (!pv_www_authenticate("$td", "pw", "0")) {{
        xlog("L_NOTICE", "REGISTER challenged: $hdr(Authorization)\\n");
        www_challenge("$td", "1");
        exit;
    }}
    xlog("L_NOTICE", "REGISTER authenticated user=$au: $hdr(Authorization)\\n");
    append_to_reply("Contact: $ct;expires=60\\r\\n");
    sl_send_reply("200", "OK");
    exit;
}}
"""


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_kamailio_verifies_our_digest(start_server, tmp_path, algorithm):
    require("kamailio")
    port = free_udp_port()
    (tmp_path / "k.cfg").write_text(REGISTRAR.format(algorithm=algorithm))
    log = tmp_path / "kamailio.log"
    with open(log, "w") as out:
        res = subprocess.run(["kamailio", "-f", str(tmp_path / "k.cfg"), "-l", f"udp:127.0.0.1:{port}",
                              "-P", str(tmp_path / "k.pid"), "-Y", str(tmp_path), "-w", str(tmp_path),
                              "-m", "32", "-M", "8", "-E"],
                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=30)
    assert res.returncode == 0, log.read_text()[-2000:]
    try:
        srv = start_server(extra_yaml=f"register:\n  registrar: sip:127.0.0.1:{port}\n  aor: sip:1000@pbx.test\n"
                                      f"  username: '1000'\n  password: pw\n  expires: 60\n")
        deadline = time.monotonic() + 30  # wide: a loaded host is slow, not wrong
        while time.monotonic() < deadline and "REGISTER authenticated" not in log.read_text():
            time.sleep(0.1)
        text = log.read_text()
        assert "REGISTER challenged" in text, text[-2000:]
        accepted = [line for line in text.splitlines() if "REGISTER authenticated user=1000" in line]
        assert accepted, text[-2000:] + srv.log_text()[-2000:]
        assert f"algorithm={algorithm}" in accepted[0], accepted[0]  # answered in the algorithm Kamailio asked for
        while time.monotonic() < deadline and "registered sip:1000@pbx.test" not in srv.log_text():
            time.sleep(0.1)
        assert "registered sip:1000@pbx.test" in srv.log_text()
    finally:
        try:
            os.kill(int((tmp_path / "k.pid").read_text().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
