"""Structured logging for the daemon and the receiver.

JSON lines when stdout is not a terminal or when systemd runs us (it sets
``JOURNAL_STREAM``), readable colourless console lines otherwise. Every line
carries the static fields given here (the pole id on a pole). Logs from
libraries that use the standard ``logging`` module go through the same renderer.

No secret reaches a log line. Tracebacks are rendered without the frames' local
variables (they held bearer tokens, the ``Authorization`` header, plate text),
and a last step scrubs whatever is about to be written: a value of a secret type
(``SecretStr``), any field named like a secret or a plate (``authorization``,
``password``, ``token``, ``plate_text``...), and in any text a bearer token, a
receiver token (``spt_...``), an scrypt hash or the password of a URL.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any, Literal, TextIO

import structlog
from pydantic import SecretBytes, SecretStr
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]


REDACTED = "[redacted]"
_SECRET_KEYS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "password", "password_hash", "secret"}
    | {"token", "bearer", "plate_text", "database_url", "dsn"}
)
_SECRET_SUFFIXES = ("_token", "_password", "_secret", "_hash")
_SECRET_TEXT = [
    (re.compile(r"(?i)\b(bearer)(\s+|%20)[^\s'\",;}\]]+"), r"\1\2" + REDACTED),
    (re.compile(r"\bspt_[A-Za-z0-9_-]{6,}"), "spt_" + REDACTED),
    (re.compile(r"\bscrypt\$[^\s'\",;}\]]+"), "scrypt$" + REDACTED),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s'\"]*:)[^@/\s'\"]+@"), r"\1" + REDACTED + "@"),
]


def _secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    k = key.lower()
    return k in _SECRET_KEYS or k.endswith(_SECRET_SUFFIXES)


def scrub(value: Any, key: object = None) -> Any:
    """``value`` with every secret in it replaced; containers are copied, never changed in place."""
    if isinstance(value, (SecretStr, SecretBytes)):
        return REDACTED
    if _secret_key(key) and value is not None and not isinstance(value, (bool, int, float)):
        return REDACTED
    if isinstance(value, str):
        for pattern, replacement in _SECRET_TEXT:
            value = pattern.sub(replacement, value)
        return value
    if isinstance(value, dict):
        return {k: scrub(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def scrub_secrets(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """The last processor before rendering: see the module's docstring."""
    return {k: scrub(v, k) if k != "event" else scrub(v) for k, v in event.items()}


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
        tracebacks = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        final: list[Processor] = [
            structlog.processors.ExceptionRenderer(tracebacks),
            scrub_secrets,
            structlog.processors.JSONRenderer(),
        ]
    else:
        final = [
            structlog.processors.format_exc_info,  # plain text, without the frames' locals
            scrub_secrets,
            structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback),
        ]
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
