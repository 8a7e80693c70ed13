"""systemd's notify protocol (sd_notify), without a dependency: READY, STOPPING, WATCHDOG.

Under ``Type=notify`` the unit is started only when we say READY=1 (after the
engine is warm and the sockets listen). With ``WatchdogSec=`` systemd sets
WATCHDOG_USEC and restarts us if the event loop stops saying WATCHDOG=1: the
pings are scheduled on the loop itself, so a blocked loop is what trips it.
Outside systemd (no NOTIFY_SOCKET) every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket


def notify(message: str) -> bool:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):  # abstract namespace
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), path)
        return True
    except OSError:
        return False


def start_watchdog(loop: asyncio.AbstractEventLoop) -> asyncio.TimerHandle | None:
    """Ping at half the watchdog interval, from the event loop."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    interval = int(usec) / 1e6 / 2

    def ping() -> None:
        notify("WATCHDOG=1")
        holder[0] = loop.call_later(interval, ping)

    holder: list[asyncio.TimerHandle] = [loop.call_later(interval, ping)]
    return holder[0]
