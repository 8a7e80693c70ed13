"""The server's child processes, as the fault tests find them."""

from __future__ import annotations

import os


def engine_child(pid: int) -> int:
    """The engine's process among the server's children (multiprocessing also starts a resource tracker)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        for child in open(f"/proc/{pid}/task/{task}/children").read().split():
            cmd = open(f"/proc/{child}/cmdline", "rb").read()
            if b"multiprocessing" in cmd and b"resource_tracker" not in cmd:
                return int(child)
    raise AssertionError("no engine process")
