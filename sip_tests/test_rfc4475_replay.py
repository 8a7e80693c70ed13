"""RFC 4475: all 49 torture messages replayed byte for byte to the real server, over UDP and TCP.

The replay runs in its own network namespace with only loopback up (``unshare --net``): the
messages name hosts in 192.0.2.0/24 and beyond, and an answered INVITE sends RTP towards its
SDP. It prints the (message, expected, got) table; after it the server must still be up,
must have logged no traceback, and must serve a SIPp call.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.rfc4475 import CASES, table

from .conftest import PEERS, ROOT


def test_every_torture_message_gets_the_rfc_answer_and_the_server_serves_a_call_after(tmp_path, capsys):
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to isolate the replay from the network")
    script = (f"ip link set lo up && cd {ROOT} && "
              f"{sys.executable} -m sip_tests.rfc4475_replay {tmp_path}")
    # as root a network namespace; otherwise a user namespace too, in which we are root
    unshare = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--map-root-user", "--net"]
    proc = subprocess.run([*unshare, "sh", "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "PEERS_DIR": str(PEERS)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    got = {r["name"]: r for r in out["rows"]}
    udp = [(c.name, c.section, c.udp, _num(got[c.name]["udp"])) for c in CASES]
    tcp = [(c.name, c.section, c.tcp, _num(got[c.name]["tcp"])) for c in CASES if c.tcp is not None]
    with capsys.disabled():
        print("\nRFC 4475 replay over UDP:\n" + table(udp) + "\n\nover TCP:\n" + table(tcp))
        ok_udp, ok_tcp = sum(e == g for _, _, e, g in udp), sum(e == g for _, _, e, g in tcp)
        print(f"\nUDP {ok_udp}/{len(udp)}, TCP {ok_tcp}/{len(tcp)}")
    assert [r for r in udp if r[2] != r[3]] == []
    assert [r for r in tcp if r[2] != r[3]] == []
    assert out["alive_after_replay"] and out["stop_codes"] == [0, 0]
    assert out["tracebacks"] == 0, out["log_tail"]
    assert out["call_after"] == 1, out["log_tail"]


def _num(value):
    return int(value) if isinstance(value, str) and value.isdigit() else value
