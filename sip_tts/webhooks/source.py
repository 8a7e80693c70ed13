"""A call on a webhook route: ask the application, then play its steps (or the fallback).

The 200 OK waits for the application (``answer_after``), within the route's timeout (2 s by
default). Why not answer first and ask while the call is up: the caller would hear nothing
either way until the application has answered (there is nothing to say before), so answering
first buys no earlier speech; it would bill the caller for silence, and a call whose application
then fails would have been answered only to be hung up (or to hear a fallback that could as well
have come before the answer). Waiting, the INVITE has its 100 Trying at once, synthesis of the
first step starts the moment the reply is validated, and the 200 OK goes out then, so the first
packets after the ACK are speech, as with a cached prompt; a call that cannot be served gets
480 and is never answered. The request itself runs in the call's own task on the event loop
(async HTTP, ``service.py``), so it holds up neither the loop nor another call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from config.schema import Route, SayStep, Step
from telephony.call import CallHandle, CallInfo

from ..script import ScriptRun, Speech
from .reply import ReplyError, WebhookReply, parse_reply
from .service import PRIVATE_HEADERS, call_details

if TYPE_CHECKING:
    from .service import Webhooks

log = logging.getLogger("sip_tts.webhooks")
REFUSE = 480  # Temporarily Unavailable: the application failed and the route has no fallback


def secret_of(route: Route, speech: Speech) -> str:
    return route.webhook_secret or speech.prompts.webhooks.secret or ""


class WebhookRun(ScriptRun):
    """The audio source of a webhook route's call (``ScriptRun`` plays the steps it settles on)."""

    def __init__(self, speech: Speech, route: Route, info: CallInfo, webhooks: "Webhooks") -> None:
        super().__init__(speech, route, info)
        self.webhooks = webhooks
        self.failure: str | None = None  # why the application's steps are not played (logged, reported)
        self._steps: list[Step] = []
        self._theirs: set[int] = set()  # the application's prompts (by identity): said as written, not cached
        self._decided: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    async def answer_after(self) -> int | None:
        """What the server waits for before answering: None to answer, or a status to refuse with."""
        return await asyncio.shield(self._decided)

    def first_steps(self) -> list[Step]:
        return self._steps

    def literal(self, say: SayStep) -> bool:
        return id(say) in self._theirs

    async def run(self, call: CallHandle) -> None:
        self.playing = "webhook"  # (GET /v1/calls: the application is being asked)
        try:
            await self._ask()
        finally:
            if not self._decided.done():  # cancelled (the caller gave up) or failed: never answer
                self._decided.set_result(REFUSE)
        if self._steps:
            await super().run(call)

    def adopt(self, reply: WebhookReply) -> None:
        """Play the application's steps, in its voice; its text is said as written, never cached."""
        if reply.voice is not None:
            self.route = self.route.model_copy(update={"voice": reply.voice})
        self._steps = reply.steps
        self._theirs = {id(say) for step in reply.steps for say in step.says()}

    async def _ask(self) -> None:
        route, info = self.route, self.info
        timeout = route.webhook_timeout_s or self.speech.prompts.webhooks.timeout_s
        payload = {"event": "call.incoming", **call_details(info), "codec": info.codec, "timestamp": time.time(),
                   "headers": {k: v for k, v in info.headers.items() if k.lower() not in PRIVATE_HEADERS}}
        started = time.perf_counter()
        assert route.webhook is not None
        body, failure = await self.webhooks.ask(route.webhook, secret_of(route, self.speech), timeout, payload)
        if body is not None:
            try:
                reply = parse_reply(body, self.speech.prompts)
            except ReplyError as exc:
                failure = str(exc)
                self.webhooks.requests["invalid"] += 1
            else:
                self.webhooks.requests["answered"] += 1
                self.adopt(reply)
                log.info("call %s: webhook answered in %.0f ms: %d steps", info.call_id,
                         (time.perf_counter() - started) * 1000, len(reply.steps))
                self._decided.set_result(None)
                return
        self.failure = failure
        if route.fallback:
            log.warning("call %s: webhook failed: %s; playing the fallback", info.call_id, failure)
            self._steps = route.fallback
            self._decided.set_result(None)
        else:
            log.warning("call %s: webhook failed: %s; no fallback, refusing with %d", info.call_id, failure, REFUSE)
            self._decided.set_result(REFUSE)
