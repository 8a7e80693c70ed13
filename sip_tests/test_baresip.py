"""baresip calls the server and records what it hears; the audio is checked by numbers."""

import subprocess
import sys
import wave

import numpy as np

from .conftest import PEERS, ROOT, free_udp_port, require


def read_wav(path):
    with wave.open(str(path)) as w:
        assert w.getframerate() == 8000 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float64)


def best_correlation(x, ref):
    n = 1 << (len(x) + len(ref)).bit_length()
    c = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(ref, n)), n)
    k = int(np.argmax(c))
    lag = k if k < n // 2 else k - n
    xs = x[max(lag, 0):]
    rs = ref[max(-lag, 0):]
    m = min(len(xs), len(rs))
    xs, rs = xs[:m], rs[:m]
    return float((xs * rs).sum() / np.sqrt((xs ** 2).sum() * (rs ** 2).sum())), lag


def test_baresip_hears_the_prompt_for_1000(server, tmp_path):
    require("baresip")
    text = "Thank you for calling. This is a test of the media server."
    ref_path = tmp_path / "ref.wav"
    subprocess.run([sys.executable, "-m", "sip_tts.cli", "say", text, "--out", str(ref_path),
                    "--config", str(server.workdir / "server.yaml")], cwd=ROOT, check=True, capture_output=True)
    rec_path = tmp_path / "rec.wav"
    res = subprocess.run([str(PEERS / "baresip" / "call_and_record.sh"), f"sip:1000@{server.uri_host}",
                          str(rec_path), "20"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    # The server hung up at the end of the prompt (we allowed 20 s): baresip saw the BYE.
    assert "terminated" in res.stderr or "session closed" in res.stderr or "Call terminated" in res.stderr, res.stderr[-2000:]
    rec = read_wav(rec_path)
    ref = read_wav(ref_path)
    ref_s, rec_s = len(ref) / 8000, len(rec) / 8000
    # speech of the expected length: the prompt plus the 300 ms tail and jitter-buffer slack
    assert ref_s - 0.1 < rec_s < ref_s + 1.5, (ref_s, rec_s)
    rms = np.sqrt(np.mean(rec ** 2))
    assert rms > 1000, rms
    corr, lag = best_correlation(rec, ref)
    assert corr > 0.9, (corr, lag)
    assert "ended: prompt-done" in server.log_text()


def test_baresip_dtmf_walks_a_menu(start_server, tmp_path):
    """baresip presses 1 (RFC 4733, sent through its ctrl_tcp `sndcode` command) at a menu."""
    import json
    import socket
    import time

    require("baresip")
    prompts = """
routes:
  - number: "1000"
    script: main
scripts:
  main:
    - menu:
        prompt: "For sales press one. For support press two."
        options: {"1": sales, "2": support}
        timeout_s: 8
  sales:
    - say: "All our sales people are busy. Please call again later."
    - hangup
  support:
    - say: "Support is closed."
    - hangup
"""
    srv = start_server(prompts=prompts)
    ctrl = free_udp_port()  # baresip's ctrl_tcp listens there
    rec_path = tmp_path / "rec.wav"
    call = subprocess.Popen([str(PEERS / "baresip" / "call_and_record.sh"), f"sip:1000@{srv.uri_host}",
                             str(rec_path), "15"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "BARESIP_CTRL_PORT": str(ctrl)})
    deadline = time.monotonic() + 15
    while "call " not in srv.log_text() and time.monotonic() < deadline:  # wait for the call to be up
        time.sleep(0.1)
    time.sleep(1.5)
    msg = json.dumps({"command": "sndcode", "params": "1", "token": "t1"}).encode()
    with socket.create_connection(("127.0.0.1", ctrl), timeout=5) as c:
        c.sendall(b"%d:%s," % (len(msg), msg))  # ctrl_tcp speaks netstrings
        reply = c.recv(4096)
    out, err = call.communicate(timeout=60)
    assert call.returncode == 0, err[-3000:]
    log = srv.log_text()
    assert "DTMF 1" in log and "rfc4733" in log, (reply, log[-2000:])
    assert "menu choice 1 -> sales" in log
    rec = read_wav(rec_path)
    sales_ref = tmp_path / "sales.wav"
    subprocess.run([sys.executable, "-m", "sip_tts.cli", "say", "All our sales people are busy. Please call again later.",
                    "--out", str(sales_ref), "--config", str(srv.workdir / "server.yaml")], cwd=ROOT, check=True,
                   capture_output=True)
    ref = read_wav(sales_ref)
    env = lambda x: np.log10(np.sqrt(np.mean(x[:len(x) // 160 * 160].reshape(-1, 160) ** 2, axis=1)) + 1)  # noqa: E731
    er, ef = env(rec), env(ref)[:60]
    best = max(np.corrcoef(er[i:i + len(ef)], ef)[0, 1] for i in range(len(er) - len(ef)))
    assert best > 0.9, best  # the sales prompt is what followed the digit
