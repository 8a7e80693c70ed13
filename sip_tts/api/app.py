"""The FastAPI application: routes, API keys, the body-size cap, errors as JSON."""

from __future__ import annotations

import hmac

from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from . import calls, errors, ops, originate, speech, voices
from .context import ApiContext
from .errors import ApiError, error_response


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(title="sip-tts", version="0.1.0", docs_url="/docs", redoc_url=None,
                  description="Speech over HTTP from the engine that answers the calls (OpenAI-compatible "
                              "/v1/audio/speech). Phone calls come first.")
    errors.install(app)
    bearer = HTTPBearer(auto_error=False, description="api.keys (none configured: no key needed)")
    keys = [k.encode() for k in ctx.settings.keys]

    async def auth(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if not keys:
            return
        given = creds.credentials.encode() if creds is not None else b""
        if not any(hmac.compare_digest(given, k) for k in keys):
            raise ApiError(401, "Authorization: a valid 'Bearer KEY' (api.keys) is needed", "Authorization",
                           "invalid_api_key", {"WWW-Authenticate": "Bearer"})

    dep = Depends(auth)
    app.include_router(ops.build(ctx.health, ctx.render_metrics))
    app.include_router(speech.build(ctx, dep))
    app.include_router(voices.build(ctx, dep))
    app.include_router(originate.build(ctx, dep))
    if ctx.live is not None:
        app.include_router(calls.build(ctx, dep, keys))
    app.add_middleware(BodyCap, cap=ctx.settings.max_body_bytes)
    return app


class BodyCap:
    """413 for a body over ``cap`` bytes: at once from Content-Length, or as a chunked body grows past it.

    Plain ASGI (not BaseHTTPMiddleware), so streamed responses pass untouched and a client's
    disconnect still reaches them."""

    def __init__(self, app, cap: int) -> None:
        self.app = app
        self.cap = cap

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_large = error_response(413, f"body: larger than api.max_body_bytes={self.cap}", "body", "too_large")
        if length is not None and (not length.isdigit() or int(length) > self.cap):
            return await too_large(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.cap:  # (FastAPI passes an HTTPException from the body's reading on)
                    raise HTTPException(413, f"body: larger than api.max_body_bytes={self.cap}")
            return message

        await self.app(scope, counted, send)


def create_ops_app(health, render_metrics) -> FastAPI:
    """``/metrics`` and ``/health`` alone (the ``metrics.listen`` port)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    errors.install(app)
    app.include_router(ops.build(health, render_metrics, playground=False))
    return app
