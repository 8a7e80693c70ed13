"""Kamailio (config/kamailio/kamailio.cfg with its tls module) forwards calls to us over TLS.

SIPp calls Kamailio over UDP, then baresip calls it over TLS with mandatory SRTP; the only
route from Kamailio to sip-tts is its TLS listener (dispatcher entry ";transport=tls", probed
with OPTIONS over TLS), with our certificate verified against the test CA and Kamailio's
client certificate verified by us.
"""

import os
import signal
import subprocess
import time

import numpy as np

from .conftest import PEERS, ROOT, free_udp_port, require, run_sipp, sipp_counts
from .test_baresip import read_wav
from .test_tls import free_tcp_port
from .tls_certs import make_certs

CONFIG = ROOT / "config" / "kamailio" / "kamailio.cfg"


def test_kamailio_forwards_calls_to_us_over_tls(start_server, tmp_path):
    require("kamailio")
    certs = make_certs(tmp_path / "certs")
    tls_port = free_tcp_port()
    srv = start_server(prompts='default: "Hello."\n', sip_yaml=(
        f"  tls:\n    listen: 127.0.0.1:{tls_port}\n    cert_file: {certs.server_cert}\n"
        f"    key_file: {certs.server_key}\n    ca_file: {certs.ca}\n    verify_client: true\n"))
    run = tmp_path / "kam"
    run.mkdir()
    (run / "dispatcher.list").write_text(f"1 sip:127.0.0.1:{tls_port};transport=tls 0 0\n")
    (run / "tls.cfg").write_text(
        f"[server:default]\nmethod = TLSv1.2+\ncertificate = {certs.server_cert}\nprivate_key = {certs.server_key}\n"
        f"verify_certificate = no\nrequire_certificate = no\n\n"
        f"[client:default]\nmethod = TLSv1.2+\nverify_certificate = yes\nrequire_certificate = yes\n"
        f"ca_list = {certs.ca}\ncertificate = {certs.client_cert}\nprivate_key = {certs.client_key}\n")
    kport, ktls = free_udp_port(), free_tcp_port()
    with open(run / "kamailio.log", "a") as log:
        res = subprocess.run(
            ["kamailio", "-f", str(CONFIG), "-l", f"udp:127.0.0.1:{kport}", "-l", f"tls:127.0.0.1:{ktls}",
             "-A", "WITH_TLS", "-A", f'TLS_CONFIG="{run}/tls.cfg"',
             "-A", f'DS_LIST_FILE="{run}/dispatcher.list"', "-A", "DS_PING_INTERVAL=1", "-A", "DS_PROBE_FAILURES=1",
             "-P", str(run / "kamailio.pid"), "-Y", str(run), "-w", str(run), "-m", "64", "-M", "8", "-E"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=30)
    assert res.returncode == 0, (run / "kamailio.log").read_text()[-2000:]
    try:
        time.sleep(3)  # the first OPTIONS probes, over TLS
        res = run_sipp(f"127.0.0.1:{kport}", "uac_pcmu_wait_bye.xml", "2000", tmp_path, "-m", "3", "-r", "2",
                       "-recv_timeout", "15000", "-trace_msg", media_port=18700)
        assert res.returncode == 0, res.stdout[-1500:] + (run / "kamailio.log").read_text()[-2000:]
        assert sipp_counts(tmp_path)["SuccessfulCall(C)"] == 3
        assert srv.log_text().count("ended: prompt-done") == 3  # our BYEs went back over TLS through Kamailio
        trace = next(tmp_path.glob("*_messages.log")).read_text()
        assert "transport=tls" in trace.lower()  # Kamailio's TLS side in the Record-Route / our Contact
        assert f":{tls_port};transport=tls" in trace  # our Contact: the TLS listener
        # The whole internet-facing path: baresip over TLS with mandatory SRTP -> Kamailio (TLS) -> us (TLS);
        # the SRTP keys travel in the SDP through the proxy, the media goes end to end.
        require("baresip")
        rec = tmp_path / "rec.wav"
        env = {**os.environ, "BARESIP_ACCOUNT_PARAMS": ";mediaenc=srtp-mand",
               "BARESIP_EXTRA_CONFIG": f"module srtp.so\nsip_cafile {certs.ca}"}
        res = subprocess.run([str(PEERS / "baresip" / "call_and_record.sh"), f"sip:2000@127.0.0.1:{ktls};transport=tls",
                              str(rec), "10"], capture_output=True, text=True, timeout=90, env=env)
        assert res.returncode == 0, res.stderr[-3000:] + (run / "kamailio.log").read_text()[-2000:]
        assert "terminated" in res.stderr  # our BYE came back through Kamailio over TLS
        audio = read_wav(rec)
        assert np.sqrt(np.mean(audio ** 2)) > 1000  # "Hello.", decrypted by baresip
        assert srv.log_text().count("ended: prompt-done") == 4
    finally:
        try:
            os.kill(int((run / "kamailio.pid").read_text().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
