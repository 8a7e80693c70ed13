"""Metrics and health over HTTP while real calls run."""

import signal
import subprocess
import time
import urllib.error
import urllib.request

from .conftest import PEERS, free_udp_port, run_sipp


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _value(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def test_metrics_count_calls_and_latencies_and_health_turns_draining(start_server, tmp_path):
    mport = free_udp_port()
    srv = start_server(extra_yaml=f"metrics:\n  listen: 127.0.0.1:{mport}\n", drain=20)
    assert get(mport, "/health") == (200, "ready\n")
    for _ in range(300):  # fixed prompts are rendered in the background after start-up
        if "prompt cache:" in srv.log_text():
            break
        time.sleep(0.1)
    else:  # a call before the render ends renders the prompt itself (and asks the engine)
        raise AssertionError("the prompt cache was not rendered in 30 s")
    res = run_sipp(srv.uri_host, "uac_pcmu_wait_bye.xml", "2000", tmp_path, "-m", "3", "-l", "3",
                   "-recv_timeout", "20000", media_port=18500)
    assert res.returncode == 0, res.stdout[-1500:]
    status, text = get(mport, "/metrics")
    assert status == 200
    assert 'sip_tts_calls_total{outcome="prompt-done"} 3.0' in text
    assert "sip_tts_invite_to_200_seconds_count 3.0" in text
    assert "sip_tts_first_audio_seconds_count 3.0" in text
    # fixed prompts come from the cache: the engine was asked nothing for these calls
    assert "sip_tts_call_engine_first_audio_seconds_count 0.0" in text
    assert "sip_tts_calls_active 0.0" in text

    # the three calls heard the same fixed prompt: rendered once (at start-up), then served from the cache
    assert _value(text, "sip_tts_prompt_cache_hits_total") >= 3
    assert _value(text, "sip_tts_prompt_cache_prompts") >= 1
    assert _value(text, "sip_tts_engine_audio_seconds_total") > 1.0
    assert 0 < _value(text, "sip_tts_engine_busy_seconds_total") < _value(text, "sip_tts_engine_audio_seconds_total")
    assert _value(text, "sip_tts_engine_step_items_total") == _value(text, "sip_tts_engine_steps_total") > 0
    # pacing ticks that woke > 10 ms late: exported (how many depends on the host's load: a count,
    # not a claim; benchmarks/rtp_pacing.py measures lateness)
    assert _value(text, "sip_tts_pacer_late_wakeups_total") >= 0
    assert get(mport, "/nope")[0] == 404
    # a call in progress, then SIGTERM: health says draining while it finishes
    sipp = subprocess.Popen(
        ["sipp", srv.uri_host, "-sf", str(PEERS / "sipp" / "uac_pcmu_wait_bye.xml"), "-s", "1000",
         "-i", "127.0.0.1", "-p", str(free_udp_port()), "-mi", "127.0.0.1", "-mp", "18600", "-m", "1",
         "-nostdin", "-recv_timeout", "20000"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    assert "sip_tts_calls_active 1.0" in get(mport, "/metrics")[1]
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert get(mport, "/health") == (503, "draining\n")
    assert sipp.wait(30) == 0
    assert srv.proc.wait(20) == 0


def test_engine_share_of_first_audio_is_measured_for_synthesized_prompts(start_server, tmp_path):
    """A prompt made for the caller (a template) asks the engine: the histogram of its first audio
    counts that call, and its time is part of (not more than) INVITE -> first audible packet."""
    mport = free_udp_port()
    srv = start_server(extra_yaml=f"metrics:\n  listen: 127.0.0.1:{mport}\n",
                       prompts='routes:\n  "4000": "Hello. This call is for {caller_digits}."\ndefault: "Hello."\n')
    res = run_sipp(srv.uri_host, "uac_pcmu_wait_bye.xml", "4000", tmp_path, "-m", "2", "-l", "1",
                   "-recv_timeout", "20000", media_port=18700)
    assert res.returncode == 0, res.stdout[-1500:]
    text = get(mport, "/metrics")[1]

    assert _value(text, "sip_tts_call_engine_first_audio_seconds_count") == 2
    engine = _value(text, "sip_tts_call_engine_first_audio_seconds_sum")
    assert 0 < engine <= _value(text, "sip_tts_first_audio_seconds_sum"), text
