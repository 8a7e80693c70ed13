"""``/health``, ``/metrics`` (Prometheus) and ``/`` (the playground page): no API key needed."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PAGE = Path(__file__).with_name("playground.html")


def build(health: Callable[[], tuple[int, str]], render_metrics: Callable[[], bytes],
          playground: bool = True) -> APIRouter:
    router = APIRouter()

    @router.get("/health", response_class=PlainTextResponse,
                responses={200: {"description": "ready", "content": {"text/plain": {}}},
                           503: {"description": "draining, full or engine down", "content": {"text/plain": {}}}})
    async def get_health() -> PlainTextResponse:
        code, text = health()
        return PlainTextResponse(text + "\n", status_code=code)

    @router.get("/v1/metrics", response_class=Response, include_in_schema=False)  # the original design's path
    @router.get("/metrics", response_class=Response,
                responses={200: {"description": "Prometheus text format", "content": {CONTENT_TYPE_LATEST: {}}}})
    async def get_metrics() -> Response:
        return Response(render_metrics(), media_type=CONTENT_TYPE_LATEST)

    if playground:
        @router.get("/", response_class=HTMLResponse, include_in_schema=False)
        async def page() -> HTMLResponse:
            return HTMLResponse(PAGE.read_text())

    return router
