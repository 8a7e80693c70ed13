"""The command line as a user runs it."""

import subprocess
import sys
import wave

import numpy as np

from .conftest import ROOT


def sip_tts(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "sip_tts.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_check_config_ok_on_the_shipped_example():
    res = sip_tts("check-config", "--config", str(ROOT / "config" / "server.yaml"))
    assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout


def test_bad_config_names_file_line_and_field_and_serve_refuses_to_start(tmp_path):
    bad = tmp_path / "server.yaml"
    bad.write_text("sip:\n  listen: 127.0.0.1:5060\nrtp:\n  port_min: 70000\n")
    for cmd in ("check-config", "serve"):
        res = sip_tts(cmd, "--config", str(bad))
        assert res.returncode == 2
        assert f"{bad}:4: rtp.port_min: " in res.stderr
        assert "Traceback" not in res.stderr


def test_bad_prompts_file_stops_start_up(tmp_path):
    (tmp_path / "server.yaml").write_text("prompts: p.yaml\n")
    (tmp_path / "p.yaml").write_text("routes:\n  '1': {text: hi, colour: x}\n  '2': {text: hi, voice: x}\n")
    res = sip_tts("serve", "--config", str(tmp_path / "server.yaml"))
    assert res.returncode == 2
    assert f"{tmp_path / 'p.yaml'}:2: routes.0.colour: unknown field" in res.stderr
    (tmp_path / "p.yaml").write_text("routes:\n  '2': {text: hi, voice: x}\n")
    res = sip_tts("serve", "--config", str(tmp_path / "server.yaml"))
    assert res.returncode == 2
    assert f"{tmp_path / 'p.yaml'}:2: routes.0.voice: unknown voice 'x'" in res.stderr


def test_say_writes_what_a_caller_hears(tmp_path):
    out = tmp_path / "x.wav"
    res = sip_tts("say", "Your call is important to us.", "--out", str(out))
    assert res.returncode == 0, res.stderr
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1)
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(float)
    assert 1.0 < len(x) / 8000 < 4.0
    assert np.sqrt(np.mean(x ** 2)) > 1000
    # 8 kHz G.711 round trip: every sample is a G.711 level, so re-encoding changes nothing
    from engine.audio import decode_g711, encode_g711
    assert np.array_equal(decode_g711(encode_g711(x.astype(np.int16), "PCMU"), "PCMU"), x.astype(np.int16))


def test_sighup_reloads_prompts_and_a_bad_file_keeps_the_running_ones(start_server):
    import signal
    import socket
    import time

    from telephony.sip import parse_message
    from tests.sipmsg import LOOPBACK, invite, offer

    srv = start_server(prompts='routes:\n  "1000": "hello"\n')

    def status_for(user: str) -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(invite(user=user, call_id=f"hup-{user}-{time.monotonic()}", sdp=offer(LOOPBACK, 9), host=LOOPBACK),
                 ("127.0.0.1", srv.port))
        codes = [parse_message(s.recvfrom(65535)[0]).status for _ in range(2)]
        s.close()
        return codes[-1]

    assert status_for("2000") == 404
    (srv.workdir / "prompts.yaml").write_text('routes:\n  "1000": "hello"\n  "2000": "new route"\n')
    srv.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert "reloaded" in srv.log_text()
    assert status_for("2000") == 200
    (srv.workdir / "prompts.yaml").write_text("routes: [broken\n")
    srv.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert "reload refused" in srv.log_text() and "prompts.yaml:" in srv.log_text()
    assert status_for("2000") == 200  # still serving the last good prompts
    assert srv.proc.poll() is None


def test_say_walks_a_route_with_digits_and_check_config_warns(tmp_path):
    """`sip-tts say --route N --digits ...` renders the walk; check-config prints warnings with lines."""
    res = sip_tts("say", "--route", "2000", "--digits", "3,4,2,#", "--out", str(tmp_path / "walk.wav"),
                  "--config", str(ROOT / "config" / "server.yaml"))
    assert res.returncode == 0, res.stderr
    said = [line.split("said: ", 1)[1] for line in res.stdout.splitlines() if "said: " in line]
    assert said[0] == "Welcome to Example Company."
    assert "Please enter your account number, then press the hash key." in said
    assert "Account 42: your balance is twelve dollars." in said and said[-1] == "Thank you for calling. Goodbye."
    with wave.open(str(tmp_path / "walk.wav")) as w:
        assert w.getframerate() == 8000 and w.getnframes() > 8000 * 8  # the chime, five prompts
    (tmp_path / "server.yaml").write_text("prompts: p.yaml\n")
    (tmp_path / "p.yaml").write_text('default: {script: a}\nscripts:\n  a:\n    - menu: {options: {"1": a}}\n'
                                     '    - hangup\n    - say: never\n')
    res = sip_tts("check-config", "--config", str(tmp_path / "server.yaml"))
    assert res.returncode == 0, res.stderr
    assert f"warning: {tmp_path / 'p.yaml'}:4: scripts.a.0.menu: menu without timeout_s" in res.stdout
    assert f"warning: {tmp_path / 'p.yaml'}:6: scripts.a.2: unreachable: step after hangup" in res.stdout
    assert "2 warnings" in res.stdout


def test_say_refuses_digits_the_script_never_asked_for(tmp_path):
    """`say --route 2000 --digits 1,2`: the sales branch hangs up after 1, so 2 is an error, not ignored."""
    res = sip_tts("say", "--route", "2000", "--digits", "1,2", "--out", str(tmp_path / "walk.wav"),
                  "--config", str(ROOT / "config" / "server.yaml"))
    assert res.returncode == 2
    assert "--digits: 2 never used" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "walk.wav").exists()


def test_errors_in_both_files_name_them_relative_to_the_working_directory(tmp_path):
    """server.yaml given by absolute path: its prompts file's errors are still named relative to cwd."""
    (tmp_path / "server.yaml").write_text("prompts: p.yaml\n")
    (tmp_path / "p.yaml").write_text("routes:\n  '1': {text: hi, colour: x}\n")
    res = sip_tts("check-config", "--config", str(tmp_path / "server.yaml"), cwd=tmp_path)
    assert res.returncode == 2
    assert "\np.yaml:2: routes.0.colour: unknown field" in res.stderr, res.stderr
    (tmp_path / "server.yaml").write_text("rtp:\n  port_min: 70000\n")
    res = sip_tts("check-config", "--config", str(tmp_path / "server.yaml"), cwd=tmp_path)
    assert "\nserver.yaml:2: rtp.port_min: " in res.stderr, res.stderr
