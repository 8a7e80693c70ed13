"""Errors as OpenAI's API writes them: ``{"error": {"message", "type", "param", "code"}}``, the field in ``param``.

Every bad request becomes a 4xx with this body (FastAPI's validation errors too:
400, not 422, as OpenAI answers); nothing reaches the client as a traceback.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("sip_tts.api")


class ErrorDetail(BaseModel):
    message: str = Field(description="what was wrong, for people")
    type: str = Field(description="OpenAI's error type, e.g. invalid_request_error")
    param: str | None = Field(None, description="the request field at fault (none: the request as a whole)")
    code: str | None = Field(None, description="a stable code for programs, e.g. voice_not_found")


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          409: "conflict_error", 413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": _TYPES.get(status, "api_error"), "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = "body" if first.get("type") == "json_invalid" else ".".join(loc) or "body"
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return error_response(400, f"{param}: {msg}", param, str(first.get("type", "invalid_value")))


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        param = "body" if exc.status_code == 413 else None
        return error_response(exc.status_code, str(exc.detail), param, None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("api: %s %s failed", request.method, request.url.path)
        return error_response(500, "internal error (logged on the server)")


def responses(*codes: int) -> dict:
    """OpenAPI ``responses`` for these error codes (so clients and schemathesis know the error body)."""
    what = {400: "bad request (param names the field)", 401: "missing or wrong API key", 404: "unknown voice or model",
            409: "name taken", 413: "body too large", 429: "too many requests at once (Retry-After)",
            503: "engine down or server draining (Retry-After)"}
    return {c: {"model": ErrorBody, "description": what.get(c, "error")} for c in codes}
