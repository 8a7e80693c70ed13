"""The ``connect`` step: the server opens the per-call WebSocket to the application.

Over it runs the same protocol as ``/v1/calls/{id}/stream`` (``sip_tts/live``: text fragments
in; events, and the caller's audio when the step asks for it, out), through the call's live
session, until the application closes it or the call ends; what it queued plays out, then the
script goes on (after the last step: hang up). Connecting is bounded (``OPEN_TIMEOUT_S``); a
connection that cannot be made is logged with the reason and the script goes on with its next
step. The handshake carries the call's id, signed like a webhook request when the route has a
secret (``X-Sip-Tts-Signature`` over the id), so the application knows the call is ours.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from config.steps import ConnectStep

from .signing import HEADER, sign

if TYPE_CHECKING:
    from ..script import ScriptRun

log = logging.getLogger("sip_tts.webhooks")
OPEN_TIMEOUT_S = 3.0
MAX_MESSAGE = 64 * 1024  # an application's message (text fragments are far smaller)


async def run_connect(run: "ScriptRun", step: ConnectStep) -> None:
    import websockets
    from websockets.asyncio.client import connect

    from ..live import Command, WebsocketsChannel

    info = run.info
    try:
        session = run.live_session()
    except RuntimeError as exc:  # live calls are off (api.enabled: false)
        log.warning("call %s: connect: %s; going on with the script", info.call_id, exc)
        return
    headers = {"X-Sip-Tts-Call-Id": info.call_id}
    secret = run.route.webhook_secret or run.speech.prompts.webhooks.secret
    if secret:
        headers[HEADER] = sign(secret, info.call_id.encode(), time.time())
    started = time.perf_counter()
    try:
        conn = await connect(step.url, additional_headers=headers, open_timeout=OPEN_TIMEOUT_S, proxy=None,
                             max_size=MAX_MESSAGE, compression=None)
    except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
        log.warning("call %s: connect failed: %s (%s); going on with the script", info.call_id,
                    type(exc).__name__, _short(exc))
        return
    log.info("call %s: connected to the application in %.0f ms", info.call_id, (time.perf_counter() - started) * 1000)
    if step.audio is not None:
        session.command(Command(audio=step.audio))
    try:
        await session.serve(WebsocketsChannel(conn))
    finally:
        await conn.close()
    await session.played()


def _short(exc: BaseException) -> str:
    """An exception's message without what the application sent (a rejected handshake's body)."""
    return str(exc).splitlines()[0][:120] if str(exc) else ""
