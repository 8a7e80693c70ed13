"""Helpers for the HTTP API tests: a running server with its API port, and audio numbers."""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np

from .conftest import RunningServer, _start_server, free_udp_port


@dataclass
class ApiServer:
    srv: RunningServer
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_api_server(tmp_path: Path, api_yaml: str = "", extra_yaml: str = "", prompts: str | None = None
                     ) -> ApiServer:
    port = free_udp_port()  # in our network namespace a free UDP port is a free TCP port too
    yaml = f"api:\n  listen: 127.0.0.1:{port}\n{api_yaml}{extra_yaml}"
    kwargs = {"prompts": prompts} if prompts is not None else {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    srv = _start_server(tmp_path, extra_yaml=yaml, **kwargs)
    return ApiServer(srv, port)


@contextlib.contextmanager
def api_server(tmp_path: Path, **kwargs: str) -> Iterator[ApiServer]:
    """``start_api_server``, stopped at the end of the block."""
    s = start_api_server(tmp_path, **kwargs)  # type: ignore[arg-type]
    try:
        yield s
    finally:
        s.srv.stop()


def metric(url: str, name: str) -> float:
    """One sample of the server's /metrics (the line ``name value``)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def speech(text: str, fmt: str = "wav", **extra: object) -> dict:
    """A /v1/audio/speech body (OpenAI's model and voice names)."""
    return {"model": "tts-1", "voice": "alloy", "input": text, "response_format": fmt, **extra}


def ready_port(line: str) -> int:
    return int(re.search(r"http api (?:only on )?port (\d+)", line).group(1))  # type: ignore[union-attr]


def decode(data: bytes, fmt: str, rate: int = 24000) -> tuple[np.ndarray, int]:
    """Samples and rate of a response body, decoded by libsndfile (pcm: 16-bit little-endian mono)."""
    import soundfile

    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768, rate
    x, sr = soundfile.read(io.BytesIO(data), dtype="float32")
    return x, sr


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    a, b = a[:n].astype(np.float64), b[:n].astype(np.float64)
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
