"""Logs: JSON lines, every line of a call bound to its Call-ID and dialed number, one summary per call."""

import json

from .conftest import run_sipp


def test_json_logs_bind_calls_and_end_each_with_a_summary(start_server, tmp_path):
    srv = start_server(prompts='routes:\n  "2000": "Hello there."\n', args=("--log-format", "json"))
    res = run_sipp(srv.uri_host, "uac_pcmu_wait_bye.xml", "2000", tmp_path, "-m", "2", "-l", "2",
                   "-recv_timeout", "20000", media_port=18600)
    assert res.returncode == 0, res.stdout[-1500:]
    srv.stop()
    lines = [json.loads(line) for line in srv.log_text().splitlines() if line.strip()]  # every line is JSON
    assert all({"timestamp", "level", "event", "logger"} <= set(x) for x in lines)
    calls = {x["call_id"] for x in lines if x.get("call_id")}
    assert len(calls) == 2
    for call_id in calls:
        mine = [x for x in lines if call_id in x["event"] or x.get("call_id") == call_id]
        assert all(x.get("call_id") == call_id and x.get("dialed") == "2000" for x in mine), mine
        summary = [x for x in mine if x.get("summary")]
        assert len(summary) == 1
        s = summary[0]
        assert s["outcome"] == "prompt-done" and s["engine"] == "espeak" and s["late_frames"] == 0
        assert s["duration_s"] > 0.5 and 0 < s["first_audio_ms"] < 500
