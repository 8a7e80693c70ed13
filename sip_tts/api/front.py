"""The synthesis POSTs' short way to the engine, in front of the FastAPI app.

N requests made at once are parsed, validated and handed to the engine one after
another on the one event loop, so the last one reaches the engine N x the
per-request work after it arrived (API overhead under a burst). Through FastAPI's
middleware, routing and dependency machinery that work was ~145 us of the ~165 us
per request up to the hand-over (``benchmarks/api_handover.py``). A well-formed,
authorized JSON body for ``/v1/audio/speech``, ``/v1/synthesize`` or
``/v1/synthesize/telephony`` goes here straight to the same handler, validated by
the same pydantic model as FastAPI validates it; anything else (another path, a
body that does not validate, a missing or wrong key, a body over the cap, not
JSON) is passed to the FastAPI app untouched, its body replayed, so every error
is still the one FastAPI gives and ``/openapi.json`` still describes the routes.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Awaitable, Callable

from pydantic import BaseModel

from .context import ApiContext
from .errors import ApiError, error_response
from .speech import (SpeechRequest, SynthesizeRequest, TelephonyRequest, speech_response, synthesize_response,
                     telephony_response)

log = logging.getLogger("sip_tts.api")
Handler = Callable[[ApiContext, BaseModel], Awaitable[object]]
ROUTES: dict[str, tuple[type[BaseModel], Handler]] = {
    "/v1/audio/speech": (SpeechRequest, speech_response),  # type: ignore[dict-item]
    "/v1/synthesize": (SynthesizeRequest, synthesize_response),  # type: ignore[dict-item]
    "/v1/synthesize/telephony": (TelephonyRequest, telephony_response),  # type: ignore[dict-item]
}


class SynthesisFront:
    """ASGI: the synthesis POSTs that need no error straight to their handler; everything else to ``app``."""

    def __init__(self, app, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx
        self.keys = [b"Bearer " + k.encode() for k in ctx.settings.keys]
        self.cap = ctx.settings.max_body_bytes

    def _plain(self, scope) -> bool:
        """JSON, of an acceptable length, with a valid key where keys are set (else FastAPI decides)."""
        ctype = auth = length = None
        for name, value in scope["headers"]:  # the first of each, as Starlette's ``headers.get`` reads them
            if name == b"content-type":
                ctype = value if ctype is None else ctype
            elif name == b"authorization":
                auth = value if auth is None else auth
            elif name == b"content-length":
                length = value if length is None else length
        if ctype is None or not (ctype == b"application/json" or ctype.startswith(b"application/json;")):
            return False
        if length is not None and (not length.isdigit() or int(length) > self.cap):
            return False
        return not self.keys or (auth is not None and any(hmac.compare_digest(auth, k) for k in self.keys))

    async def __call__(self, scope, receive, send) -> None:
        route = ROUTES.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None or not self._plain(scope):
            return await self.app(scope, receive, send)
        parts: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # gone before its body came: as FastAPI would see it
                return await self.app(scope, _replay(parts, message, receive), send)
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            more = message.get("more_body", False)
            if size > self.cap:
                return await self.app(scope, _replay(parts, message, receive), send)
        model, handler = route
        try:  # as FastAPI validates a body: json.loads, then the model (python mode)
            body = model.model_validate(json.loads(b"".join(parts)))
        except Exception:  # json's ValueError, the model's ValidationError, a RecursionError on deep nesting:
            # FastAPI answers each (400 / 422), its body replayed
            return await self.app(scope, _replay(parts, None, receive), send)
        try:
            response = await handler(self.ctx, body)
        except ApiError as exc:
            response = error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)
        except Exception:
            log.exception("api: POST %s failed", scope["path"])
            response = error_response(500, "internal error (logged on the server)")
        await response(scope, receive, send)  # type: ignore[operator]


def _replay(parts: list[bytes], last: dict | None, receive):
    """``receive`` for the FastAPI app: the body already read, as one message, then the connection's own."""
    more = last is not None and (last["type"] != "http.request" or last.get("more_body", False))
    pending = [{"type": "http.request", "body": b"".join(parts), "more_body": more}]
    if last is not None and last["type"] != "http.request":
        pending.append(last)

    async def replayed() -> dict:
        return pending.pop(0) if pending else await receive()

    return replayed
