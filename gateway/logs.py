"""Structured logging for the daemon and the receiver.

JSON lines when stdout is not a terminal or when systemd runs us (it sets
``JOURNAL_STREAM``), readable colourless console lines otherwise. Every line
carries the static fields given here (the pole id on a pole). Logs from
libraries that use the standard ``logging`` module go through the same renderer.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]


def wants_json(fmt: LogFormat, stream: TextIO) -> bool:
    if fmt != "auto":
        return fmt == "json"
    return "JOURNAL_STREAM" in os.environ or not stream.isatty()


def configure_logging(
    level: LogLevel = "info", fmt: LogFormat = "auto", stream: TextIO | None = None, **static: Any
) -> None:
    """Set up structlog and stdlib logging; ``static`` fields (e.g. ``pole_id``) go on every line."""
    out = stream or sys.stdout

    def add_static(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        for key, value in static.items():
            event.setdefault(key, value)
        return event

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_static,
    ]
    if wants_json(fmt, out):
        final: list[Processor] = [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        final = [structlog.dev.ConsoleRenderer(colors=False)]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # aiohttp logs every request at info; technicians want our events, not access lines.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
