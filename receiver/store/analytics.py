"""Analytics queries over the rollup tables, written once for both backends.

The rollups (see :mod:`receiver.store.rollups`) hold hours and days, so a window is whole hours.
Counts come from the smallest table that answers: the fleet-wide tables when no pole or tag
narrows the question (their size does not grow with the fleet), else the per-pole totals when
types are neither asked for nor filtered, else the per-pole counts by type; whole days from the
daily tables, the hours at either end from the hourly ones. The SQL is the
subset PostgreSQL and SQLite share; only placeholders differ (``$1`` or ``?``), which
:class:`Params` writes as values are added, in the order they appear in the text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from receiver.store.rollups import DAY, SPEED_SCALE

By = Literal["type", "pole", "hour", "day"]
BY_VALUES: tuple[By, ...] = ("type", "pole", "hour", "day")


@dataclass(frozen=True, slots=True)
class Window:
    """Whole hours from ``since`` (included) to ``until`` (excluded), epoch seconds, optionally narrowed."""

    since: int
    until: int
    pole_id: str | None = None
    tag: str | None = None  # poles carrying this tag now


@dataclass(frozen=True, slots=True)
class CountsQuery:
    window: Window
    by: By
    type: str | None = None


@dataclass(frozen=True, slots=True)
class TrafficRow:
    hour: int
    pole_id: str
    line: str
    direction: str
    class_: str
    count: int


@dataclass(frozen=True, slots=True)
class AirRow:
    hour: int
    pole_id: str
    pm25_mean: float
    pm25_max: float
    pm10_mean: float
    pm10_max: float
    samples: int


@dataclass(frozen=True, slots=True)
class SpeedRow:
    """Passes of one hour at one pole; percentiles by nearest rank, in km/h."""

    hour: int
    pole_id: str
    count: int
    p50: float
    p85: float
    max: float
    violations: int  # passes over their limit


class Params:
    """Values of one statement, each added where its placeholder goes."""

    def __init__(self, mark: Callable[[int], str]) -> None:
        self.values: list[Any] = []
        self._mark = mark

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return self._mark(len(self.values))


def _narrowed(window: Window, p: Params, type_: str | None = None) -> str:
    """The conditions on pole, tag and type, each starting with AND (none: empty)."""
    out = ""
    if window.pole_id is not None:
        out += f" AND pole_id = {p(window.pole_id)}"
    if window.tag is not None:
        out += f" AND pole_id IN (SELECT pole_id FROM pole_tags WHERE tag = {p(window.tag)})"
    if type_ is not None:
        out += f" AND type = {p(type_)}"
    return out


def _per_pole(window: Window) -> bool:
    return window.pole_id is not None or window.tag is not None


def _tables(query: CountsQuery) -> tuple[str, str]:
    """The hourly and daily tables that answer ``query`` with the fewest rows."""
    if not _per_pole(query.window) and query.by != "pole":
        return "rollup_fleet_hourly", "rollup_fleet_daily"
    if query.by != "type" and query.type is None:  # all types together: one row per pole and hour
        return "rollup_pole_hourly_total", "rollup_pole_daily_total"
    return "rollup_pole_hourly", "rollup_pole_daily"


def counts_sql(query: CountsQuery, p: Params) -> str:
    """Rows of (key, count) ordered by key; the key is a type, a pole id or an hour's or day's start."""
    w = query.window
    hourly, daily = _tables(query)
    if query.by == "hour":
        return (
            f"SELECT hour, CAST(sum(n) AS BIGINT) FROM {hourly} WHERE hour >= {p(w.since)} AND hour < {p(w.until)}"
            f"{_narrowed(w, p, query.type)} GROUP BY hour ORDER BY hour"
        )
    key = {"type": "type", "pole": "pole_id", "day": "{day}"}[query.by]
    first_day, last_day = -(-w.since // DAY) * DAY, w.until // DAY * DAY
    if first_day >= last_day:  # no whole day inside: hours only
        parts = [
            f"SELECT {key.format(day='hour - hour % 86400')} AS k, n FROM {hourly}"
            f" WHERE hour >= {p(w.since)} AND hour < {p(w.until)}{_narrowed(w, p, query.type)}"
        ]
    else:
        parts = [
            f"SELECT {key.format(day='day')} AS k, n FROM {daily}"
            f" WHERE day >= {p(first_day)} AND day < {p(last_day)}{_narrowed(w, p, query.type)}"
        ]
        for start, end in ((w.since, first_day), (last_day, w.until)):
            if start < end:
                parts.append(
                    f"SELECT {key.format(day='hour - hour % 86400')} AS k, n FROM {hourly}"
                    f" WHERE hour >= {p(start)} AND hour < {p(end)}{_narrowed(w, p, query.type)}"
                )
    union = " UNION ALL ".join(parts)
    return f"SELECT k, CAST(sum(n) AS BIGINT) FROM ({union}) AS parts GROUP BY k ORDER BY k"


def hours_by_type_sql(window: Window, p: Params) -> str:
    """Rows of (hour, type, count) ordered by hour and type."""
    table = "rollup_pole_hourly" if _per_pole(window) else "rollup_fleet_hourly"
    return (
        f"SELECT hour, type, CAST(sum(n) AS BIGINT) FROM {table}"
        f" WHERE hour >= {p(window.since)} AND hour < {p(window.until)}{_narrowed(window, p)}"
        " GROUP BY hour, type ORDER BY hour, type"
    )


def traffic_sql(window: Window, limit: int, p: Params) -> str:
    return (
        "SELECT hour, pole_id, line, direction, class, n FROM rollup_traffic"
        f" WHERE hour >= {p(window.since)} AND hour < {p(window.until)}{_narrowed(window, p)}"
        f" ORDER BY hour, pole_id, line, direction, class LIMIT {p(limit)}"
    )


def air_sql(window: Window, limit: int, p: Params) -> str:
    return (
        "SELECT hour, pole_id, pm25_sum / samples, pm25_max, pm10_sum / samples, pm10_max, samples FROM rollup_air"
        f" WHERE hour >= {p(window.since)} AND hour < {p(window.until)}{_narrowed(window, p)}"
        f" ORDER BY hour, pole_id LIMIT {p(limit)}"
    )


def speed_sql(window: Window, limit: int, p: Params) -> str:
    """Per hour and pole: passes, the 50th and 85th percentile buckets (the smallest whose running
    count reaches that share of the passes: nearest rank, in whole numbers), the top bucket, violations."""
    return (
        "WITH c AS (SELECT hour, pole_id, bucket, over_limit,"
        " sum(n) OVER (PARTITION BY hour, pole_id ORDER BY bucket) AS running,"
        " sum(n) OVER (PARTITION BY hour, pole_id) AS total"
        f" FROM rollup_speed WHERE hour >= {p(window.since)} AND hour < {p(window.until)}{_narrowed(window, p)})"
        " SELECT hour, pole_id, CAST(max(total) AS BIGINT),"
        " min(CASE WHEN running * 100 >= total * 50 THEN bucket END),"
        " min(CASE WHEN running * 100 >= total * 85 THEN bucket END),"
        " max(bucket), CAST(sum(over_limit) AS BIGINT)"
        f" FROM c GROUP BY hour, pole_id ORDER BY hour, pole_id LIMIT {p(limit)}"
    )


# Both drivers give the columns' own types (integers, floats, text): rows map straight onto these.


def traffic_rows(rows: list[Any]) -> list[TrafficRow]:
    return [TrafficRow(*r) for r in rows]


def air_rows(rows: list[Any]) -> list[AirRow]:
    return [AirRow(*r) for r in rows]


def speed_rows(rows: list[Any]) -> list[SpeedRow]:
    return [SpeedRow(r[0], r[1], r[2], r[3] / SPEED_SCALE, r[4] / SPEED_SCALE, r[5] / SPEED_SCALE, r[6]) for r in rows]
