"""The ``connect`` step: the server opens the per-call WebSocket to the application.

Placeholder until the live session (``sip_tts/live``) is merged: the step is validated and
reaches here, and the call goes on with its next step.
"""

from __future__ import annotations

import logging

from config.steps import ConnectStep

log = logging.getLogger("sip_tts.webhooks")


async def run_connect(run, step: ConnectStep) -> None:
    log.warning("call %s: connect is not available in this build", run.info.call_id)
