"""Logging never blocks the thread that logs (the event loop, which paces every call's RTP)."""

from __future__ import annotations

import logging
import os
import sys
import threading

import pytest

from sip_tts import logs


@pytest.mark.timeout(120)
def test_a_stalled_stderr_does_not_block_the_logging_thread():
    """2,000 lines (~8x a pipe's 64 KiB) into a pipe nobody reads yet: the log calls return
    (written directly, the first full pipe buffer would block the caller until read; so the
    logging runs in a thread given 60 s, which fails the test instead of hanging it, and the
    pipe is then read to unblock it either way); every line arrives, in order, with its bound
    call context, once the pipe is read. No claim on speed: that would be a benchmark."""
    import structlog

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.stderr)
    r, w = os.pipe()
    stream = os.fdopen(w, "w", buffering=1)
    sys.stderr = stream
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(b"".join(iter(lambda: os.read(r, 65536), b""))))
    try:
        logs.configure("INFO", "json")
        log = logging.getLogger("test.writer")

        def write_lines() -> None:
            structlog.contextvars.bind_contextvars(call_id="c-1")
            for i in range(2000):
                log.info("line %d %s", i, "x" * 100)
            structlog.contextvars.clear_contextvars()

        writer = threading.Thread(target=write_lines, daemon=True)
        writer.start()
        writer.join(60)
        blocked = writer.is_alive()
        reader.start()
        logs._stop_writer()  # drains the queue into the pipe
        stream.close()
        reader.join(30)
        writer.join(30)
    finally:
        sys.stderr = saved[2]
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert not blocked, "the logging thread blocked on the unread pipe"
    assert not reader.is_alive(), "the pipe was never closed (the writer did not drain)"
    lines = got[0].decode().splitlines()
    assert len(lines) == 2000 and '"line 1999 ' in lines[-1] and '"line 0 ' in lines[0]
    assert all('"call_id": "c-1"' in line for line in lines)
