"""Logging: structlog over the standard library, JSON in production, readable on a terminal.

Every module logs through the standard ``logging`` API; one ``ProcessorFormatter``
renders all records. Call context (Call-ID, dialed and caller numbers) is bound
with ``structlog.contextvars`` where a call's work runs — the call's audio task
binds it once, and the server binds it around each call event — so each line of
a call carries ``call_id`` and ``dialed``. Keyword context passed as ``extra=``
becomes fields of the line (the per-call summary uses that).

``format``: ``json`` (one object per line: systemd's journal, log shippers),
``console`` (aligned and coloured when a terminal), or ``auto`` (console when
stderr is a terminal, else JSON).
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else \
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.configure(processors=shared[:1] + [structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
                        logger_factory=structlog.stdlib.LoggerFactory(),
                        wrapper_class=structlog.stdlib.BoundLogger, cache_logger_on_first_use=True)
