"""Helpers for live-call tests and the agent-latency benchmark: a server whose routes hand calls to an
application, the calls API, the WebSocket client side, and the counters that must return to zero."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import numpy as np

from engine.audio import decode_g711

from .api_support import ApiServer, start_api_server

LIVE_PROMPTS = """
routes:
  - number: "5000"
    steps: [live]
  - number: "5001"
    steps:
      - live: {wait_s: 1}
      - say: "Nobody came."
  - number: "1000"
    say: "This is a long announcement that keeps going for a while so that the caller stays on the line."
default: "Hello."
"""
# What must be back at zero once the calls are over, however they ended (sip_tts/app.py's gauges).
LEAK_GAUGES = ("sip_tts_calls_active", "sip_tts_live_sessions", "sip_tts_live_streams", "sip_tts_live_tasks",
               "sip_tts_rtp_ports_in_use", "sip_tts_sip_calls_open")


def start_live_server(tmp_path: Path, api_yaml: str = "", prompts: str = LIVE_PROMPTS, extra_yaml: str = "") -> ApiServer:
    return start_api_server(tmp_path, api_yaml=api_yaml, prompts=prompts, extra_yaml=extra_yaml)


def headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def wait_call(api: ApiServer, dialed: str, key: str | None = None, timeout: float = 15,
              state: str = "confirmed") -> str:
    """The id of a call to ``dialed`` that reached ``state`` (GET /v1/calls, polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(api.url + "/v1/calls", headers=headers(key))
        r.raise_for_status()
        for call in r.json()["data"]:
            if call["dialed"] == dialed and call["state"] == state:
                return call["id"]
        time.sleep(0.05)
    raise AssertionError(f"no {state} call to {dialed}: {httpx.get(api.url + '/v1/calls', headers=headers(key)).text}")


def ws_url(api: ApiServer, call_id: str) -> str:
    return f"ws://127.0.0.1:{api.port}/v1/calls/{call_id}/stream"


def gauges(api: ApiServer) -> dict[str, float]:
    values = {}
    for line in httpx.get(api.url + "/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in LEAK_GAUGES + ("sip_tts_asyncio_tasks",):
            values[name] = float(value)
    return values


def assert_clean(api: ApiServer, timeout: float = 10, tasks_at_most: float | None = None) -> dict[str, float]:
    """Every leak gauge back at zero (and the loop's tasks at most ``tasks_at_most``), polled."""
    deadline = time.monotonic() + timeout
    while True:
        g = gauges(api)
        clean = all(g.get(n) == 0 for n in LEAK_GAUGES) and (
            tasks_at_most is None or g["sip_tts_asyncio_tasks"] <= tasks_at_most)
        if clean or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert clean, g
    return g


async def next_event(ws, kind: str, timeout: float = 15) -> dict:
    """The next event named ``kind`` (others, and binary frames, are skipped)."""
    async def find() -> dict:
        while True:
            msg = await ws.recv()
            if isinstance(msg, str) and json.loads(msg)["event"] == kind:
                return json.loads(msg)

    return await asyncio.wait_for(find(), timeout)


def loud(payload: bytes, codec: str = "PCMU") -> bool:
    """A frame with speech in it (mean absolute sample over 100: well above G.711's quiet codes)."""
    return float(np.abs(decode_g711(payload, codec).astype(float)).mean()) > 100


def silent_runs(flags: list[bool]) -> list[int]:
    """Lengths of the runs of quiet frames between the first and the last loud one."""
    loud_at = [i for i, f in enumerate(flags) if f]
    runs, n = [], 0
    for f in flags[loud_at[0]:loud_at[-1] + 1] if loud_at else []:
        if f:
            if n:
                runs.append(n)
            n = 0
        else:
            n += 1
    return runs


def envelope_match(rec: np.ndarray, ref: np.ndarray) -> float:
    """How well ``ref``'s loudness contour (log RMS per 20 ms) matches the best-aligned stretch of ``rec``'s
    (Pearson). The measure for speech: an engine's samples differ between two renderings, the contour does not."""
    def envelope(x: np.ndarray) -> np.ndarray:
        n = len(x) // 160 * 160
        return np.log10(np.sqrt(np.mean(x[:n].astype(float).reshape(-1, 160) ** 2, axis=1)) + 1)

    er, ef = envelope(rec), envelope(ref)
    if len(er) < len(ef):
        er, ef = ef, er
    return max(float(np.corrcoef(er[i:i + len(ef)], ef)[0, 1]) for i in range(len(er) - len(ef) + 1))
