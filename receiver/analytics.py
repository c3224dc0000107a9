"""``GET /v1/analytics/...``: counts and the city's aggregates for readers, from the rollup tables.

Times are taken as epoch seconds or ISO-8601 with a zone (``2026-11-30T10:00:00Z``) and answered
as ISO-8601 UTC. Buckets are whole hours of the event's own time (see
:mod:`receiver.store.rollups`), so a window is widened to whole hours (``since`` down, ``until``
up) and the answer says which hours it counted. ``tag`` means the poles that carry the tag now.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from aiohttp import web
from multidict import MultiMapping

from httpkit.errors import json_error, json_response
from receiver.auth import READERS, authenticate
from receiver.context import Context
from receiver.events import BadParameter
from receiver.store.analytics import BY_VALUES, AirRow, CountsQuery, SpeedRow, TrafficRow, Window
from receiver.store.base import TAG_PATTERN
from receiver.store.rollups import DAY, HOUR, hour_of
from sync import limits
from sync.protocol import EVENT_TYPE_PATTERN, POLE_ID_PATTERN

_Row = TypeVar("_Row", TrafficRow, AirRow, SpeedRow)

_POLE_ID = re.compile(POLE_ID_PATTERN)
_EVENT_TYPE = re.compile(EVENT_TYPE_PATTERN)
_TAG = re.compile(TAG_PATTERN)
# The last hour whose end can still be written as an ISO date (year 9999).
_LATEST = hour_of(limits.TS_MAX)

_NARROWING = ("pole", "tag")
_RANGE = ("since", "until", *_NARROWING)


@functools.lru_cache(maxsize=65_536)  # answers repeat each hour once per pole; formatting costs 3 us
def iso(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_time(name: str, text: str) -> float:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BadParameter(
            name, f"not epoch seconds nor an ISO-8601 time such as 2026-11-30T10:00:00Z: {text[:40]!r}"
        ) from None
    if when.tzinfo is None:
        raise BadParameter(name, "an ISO-8601 time needs its zone (end it with Z for UTC)")
    return when.timestamp()


def parse_time(name: str, text: str) -> float:
    """Epoch seconds from a number of them or from ISO-8601 with a zone."""
    try:
        value = float(text)
    except ValueError:
        value = _iso_time(name, text)
    if not math.isfinite(value) or not limits.TS_MIN <= value <= _LATEST:
        raise BadParameter(name, f"must be a time from 1970-01-01 to {iso(_LATEST)}")
    return value


def _only(q: MultiMapping[str], allowed: tuple[str, ...]) -> None:
    for name in q:
        if name not in allowed:
            raise BadParameter(name, f"unknown parameter (this route takes {', '.join(allowed)})")
        if len(q.getall(name)) > 1:
            raise BadParameter(name, "given more than once")


def _matching(q: Mapping[str, str], name: str, pattern: re.Pattern[str], what: str) -> str | None:
    text = q.get(name)
    if text is not None and not pattern.match(text):
        raise BadParameter(name, f"not {what}")
    return text


def _narrowing(q: Mapping[str, str]) -> tuple[str | None, str | None]:
    return (
        _matching(q, "pole", _POLE_ID, "a pole id (letters, digits, . _ -, at most 64)"),
        _matching(q, "tag", _TAG, "a tag (letters, digits, . _ : -, at most 64)"),
    )


def parse_window(q: Mapping[str, str], max_days: int) -> Window:
    """The whole hours a request's ``since`` and ``until`` cover, with its ``pole`` and ``tag``."""
    bounds = []
    for name in ("since", "until"):
        text = q.get(name)
        if text is None:
            raise BadParameter(name, "missing (epoch seconds or ISO-8601, e.g. 2026-11-30T10:00:00Z)")
        bounds.append(parse_time(name, text))
    since, until = bounds
    if since >= until:
        raise BadParameter("until", "must be later than since")
    if until - since > max_days * DAY:
        raise BadParameter("until", f"at most {max_days} days after since")
    pole, tag = _narrowing(q)
    return Window(hour_of(since), -int(-until // HOUR) * HOUR, pole, tag)


def _range_body(window: Window) -> dict[str, Any]:
    return {"since": iso(window.since), "until": iso(window.until)}


class Analytics:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def _refused(self, request: web.Request) -> web.Response | None:
        auth = await authenticate(request, self.ctx.store, *READERS, use=self.ctx.token_use)
        return auth if isinstance(auth, web.Response) else None

    def _too_many(self, rows: list[Any]) -> web.Response | None:
        limit = self.ctx.config.analytics_max_rows
        if len(rows) <= limit:
            return None
        return json_error(
            400, f"until: the answer would exceed {limit} rows; ask for fewer hours, or narrow by pole or tag"
        )

    async def counts(self, request: web.Request) -> web.Response:
        refused = await self._refused(request)
        if refused is not None:
            return refused
        q = request.query
        try:
            _only(q, ("by", "type", *_RANGE))
            window = parse_window(q, self.ctx.config.analytics_max_days)
            by = q.get("by")
            if by not in BY_VALUES:
                raise BadParameter("by", f"must be one of {', '.join(BY_VALUES)}")
            type_ = _matching(q, "type", _EVENT_TYPE, "an event type (lowercase letters, digits and _)")
        except BadParameter as exc:
            return json_error(400, str(exc))
        rows = await self.ctx.store.analytics_counts(CountsQuery(window, by, type_))
        timed = by in ("hour", "day")
        return json_response(
            {
                "by": by,
                **_range_body(window),
                "rows": [{"key": iso(key) if timed else key, "count": n} for key, n in rows],
            }
        )

    async def last24h(self, request: web.Request) -> web.Response:
        refused = await self._refused(request)
        if refused is not None:
            return refused
        try:
            _only(request.query, _NARROWING)
            pole, tag = _narrowing(request.query)
        except BadParameter as exc:
            return json_error(400, str(exc))
        until = hour_of(time.time()) + HOUR  # the hour under way is the last of the 24
        window = Window(until - 24 * HOUR, until, pole, tag)
        rows = await self.ctx.store.analytics_hours_by_type(window)
        return json_response(
            {
                **_range_body(window),
                "rows": [{"hour": iso(hour), "type": type_, "count": n} for hour, type_, n in rows],
            }
        )

    async def _window(self, request: web.Request) -> Window | web.Response:
        refused = await self._refused(request)
        if refused is not None:
            return refused
        try:
            _only(request.query, _RANGE)
            return parse_window(request.query, self.ctx.config.analytics_max_days)
        except BadParameter as exc:
            return json_error(400, str(exc))

    async def traffic(self, request: web.Request) -> web.Response:
        return await self._hourly(request, self.ctx.store.analytics_traffic, _traffic_row)

    async def air(self, request: web.Request) -> web.Response:
        return await self._hourly(request, self.ctx.store.analytics_air, _air_row)

    async def speed(self, request: web.Request) -> web.Response:
        return await self._hourly(request, self.ctx.store.analytics_speed, _speed_row)

    async def _hourly(
        self,
        request: web.Request,
        fetch: Callable[[Window, int], Awaitable[Sequence[_Row]]],
        render: Callable[[_Row], dict[str, Any]],
    ) -> web.Response:
        """The per pole and hour answers: a window, at most ``analytics_max_rows`` rows (one more is
        fetched to tell a full answer from a cut one), each row rendered as JSON."""
        window = await self._window(request)
        if isinstance(window, web.Response):
            return window
        rows = await fetch(window, self.ctx.config.analytics_max_rows + 1)
        too_many = self._too_many(list(rows))
        if too_many is not None:
            return too_many
        return json_response({**_range_body(window), "rows": [render(r) for r in rows]})


def _traffic_row(r: TrafficRow) -> dict[str, Any]:
    return {
        "hour": iso(r.hour),
        "pole_id": r.pole_id,
        "line": r.line,
        "direction": r.direction,
        "class": r.class_,
        "count": r.count,
    }


def _air_row(r: AirRow) -> dict[str, Any]:
    return {
        "hour": iso(r.hour),
        "pole_id": r.pole_id,
        "pm25_mean": round(r.pm25_mean, 2),
        "pm25_max": r.pm25_max,
        "pm10_mean": round(r.pm10_mean, 2),
        "pm10_max": r.pm10_max,
        "samples": r.samples,
    }


def _speed_row(r: SpeedRow) -> dict[str, Any]:
    return {
        "hour": iso(r.hour),
        "pole_id": r.pole_id,
        "count": r.count,
        "p50": r.p50,
        "p85": r.p85,
        "max": r.max,
        "violations": r.violations,
    }
