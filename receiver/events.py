"""``GET /v1/events``: stored events for readers, filtered, in pages with a cursor."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from aiohttp import web

from httpkit.errors import json_error, json_response
from receiver.auth import READERS, authenticate
from receiver.context import Context
from receiver.store.base import EventQuery
from sync import limits
from sync.protocol import EVENT_TYPE_PATTERN, POLE_ID_PATTERN

_POLE_ID = re.compile(POLE_ID_PATTERN)
_EVENT_TYPE = re.compile(EVENT_TYPE_PATTERN)


class BadParameter(ValueError):
    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: {why}")


def _integer(q: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = q.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadParameter(name, f"not an integer: {text[:40]!r}") from None
    if not low <= value <= high:
        raise BadParameter(name, f"must be between {low} and {high}")
    return value


def _time(q: Mapping[str, str], name: str) -> float | None:
    text = q.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadParameter(name, f"not a number of epoch seconds: {text[:40]!r}") from None
    if not math.isfinite(value):
        raise BadParameter(name, "must be a finite number of epoch seconds")
    return value


def _matching(q: Mapping[str, str], name: str, pattern: re.Pattern[str], what: str) -> str | None:
    text = q.get(name)
    if text is not None and not pattern.match(text):
        raise BadParameter(name, f"not {what}")
    return text


def parse_query(q: Mapping[str, str], page_max: int) -> EventQuery:
    """The query a request's parameters ask for; :class:`BadParameter` names the first bad one."""
    return EventQuery(
        pole_id=_matching(q, "pole", _POLE_ID, "a pole id (letters, digits, . _ -, at most 64)"),
        type=_matching(q, "type", _EVENT_TYPE, "an event type (lowercase letters, digits and _)"),
        since=_time(q, "since"),
        until=_time(q, "until"),
        after=_integer(q, "cursor", 0, 0, limits.INT64_MAX),
        limit=_integer(q, "limit", 100, 1, page_max),
    )


class Events:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def list(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        auth = await authenticate(request, ctx.store, *READERS, use=ctx.token_use)
        if isinstance(auth, web.Response):
            return auth
        try:
            query = parse_query(request.query, ctx.config.events_page_max)
        except BadParameter as exc:
            return json_error(400, str(exc))
        page = await ctx.store.query_events(query)
        return json_response({"events": page.events, "next_cursor": page.next_cursor})
