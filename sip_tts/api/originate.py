"""``POST /v1/calls`` (place a call) and ``POST /v1/calls/{id}/transfer`` (blind transfer).

The call is placed on the server's loop (handed across when the API has a thread of its
own); the answer comes at once with the Call-ID, before the callee answers: progress goes to
``status_callback``, and to the call's WebSocket (``/v1/calls/{id}/stream``, which a call whose
first step is ``live`` may open at once: sip_tts/live). Over ``limits.max_calls`` or a trunk's limits: 429, and no INVITE was sent.
(GET /v1/calls and the per-call verbs live in ``calls.py``.)
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from config.steps import Step
from telephony.sip.outbound_calls import CallRefused

from .context import ApiContext
from .errors import ApiError, responses

LIMIT_PARAM = {"max_calls": "limits.max_calls", "trunk_concurrent": "trunk", "trunk_cps": "trunk", "ports": "rtp"}


class CallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    to: str = Field(min_length=1, max_length=256, description="a SIP URI, or a number sent through `trunk`")
    from_: str | None = Field(None, alias="from", max_length=256, description="a SIP URI or a number (caller id)")
    trunk: str | None = Field(None, description="a trunk of server.yaml; default: the only one, for a number")
    say: str | None = Field(None, min_length=1, max_length=4096, description="on answer: say this, then hang up")
    steps: list[Step] | None = Field(None, min_length=1, description="on answer: a script (prompts.yaml steps)")
    webhook: str | None = Field(None, pattern=r"^https?://[^\s/]+", description="ask this application what to "
                                "play (signed POST, as a webhook route; asked while it rings)")
    connect: str | None = Field(None, pattern=r"^wss?://[^\s/]+", description="on answer: the application "
                                "drives the call over this WebSocket (the connect step)")
    voice: str | None = Field(None, description="a voice of prompts.yaml")
    vars: dict[str, str] = Field(default_factory=dict, description="values for the steps' {fields}")
    ring_timeout_s: float | None = Field(None, gt=0, le=600, description="no answer by then: CANCEL")
    status_callback: str | None = Field(None, pattern=r"^https?://", description="progress is POSTed here (JSON)")

    @model_validator(mode="after")
    def _one_action(self) -> "CallRequest":
        given = [k for k in ("say", "steps", "webhook", "connect") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("exactly one of say, steps, webhook, connect is needed"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


class CallCreated(BaseModel):
    call_id: str
    status: str = "calling"


class TransferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(min_length=1, max_length=256, description="SIP URI the callee is referred to (Refer-To)")


class TransferResult(BaseModel):
    call_id: str
    outcome: str  # succeeded (the call ended) | failed (the call stays up)
    sip_status: int | None = None
    reason: str = ""


def build(ctx: ApiContext, auth) -> APIRouter:
    router = APIRouter(dependencies=[auth])

    def originator():
        if ctx.outbound is None:
            raise ApiError(503, "outbound calls need SIP (sip.enabled: true)", None, "no_sip")
        return ctx.outbound

    async def on_server(coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the server's loop (this one, unless the API has its own thread)."""
        if ctx.engine_loop is None:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, ctx.engine_loop))

    @router.post("/v1/calls", response_model=CallCreated, status_code=201, responses=responses(400, 401, 429, 503),
                 summary="Place a call: the INVITE goes out now; progress goes to status_callback and its stream")
    async def place(body: CallRequest) -> CallCreated:
        from sip_tts.outbound import BadRequest, CallOrder

        out = originator()
        order = CallOrder(body.to, body.from_, body.trunk, body.say, body.steps, body.webhook, body.connect,
                          body.voice, body.ring_timeout_s, body.status_callback, body.vars)
        try:
            call_id = await on_server(out.place(order))
        except BadRequest as exc:
            raise ApiError(400, str(exc), exc.field, "invalid_value") from None
        except CallRefused as exc:
            status = 503 if exc.reason == "draining" else 429
            raise ApiError(status, f"call refused, no INVITE sent: {exc}", LIMIT_PARAM.get(exc.reason), exc.reason,
                           {"Retry-After": "1"}) from None
        return CallCreated(call_id=call_id)

    @router.post("/v1/calls/{call_id}/transfer", response_model=TransferResult, responses=responses(400, 401, 404, 409),
                 summary="Blind transfer (REFER): answers with the outcome; the call ends when it succeeds")
    async def transfer(call_id: str, body: TransferRequest) -> TransferResult:
        from sip_tts.outbound import BadRequest

        try:
            result = await on_server(originator().transfer(call_id, body.target))
        except BadRequest as exc:
            raise ApiError(400, str(exc), exc.field, "invalid_value") from None
        except KeyError:
            raise ApiError(404, f"no call {call_id!r} of ours is in progress", "call_id", "call_not_found") from None
        except RuntimeError as exc:
            raise ApiError(409, str(exc), "call_id", "call_state") from None
        return TransferResult(**result)

    return router
