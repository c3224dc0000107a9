"""What newly stored events add to the analytics rollups, summed per batch in Python.

Each backend writes these sums in the transaction that inserts the events, and only for the events
that insert reports as new: a replayed batch adds nothing, and two receivers taking the same batch
at once cannot both count it. One upsert per bucket, not per event, keeps ingest cheap.

Buckets are hours (and days) of the event's own ``ts``: when it happened by the pole's clock, not
when it arrived, so a pole that was offline for a day still counts in the hours its events happened.
A ``count`` event's crossings go to the hour of the period they were counted in
(``data.period_start``), which its ``ts`` (the moment the period was reported) may already be past.

Which fields count and how buckets are computed is repeated in SQL by each backend's migration 5,
which builds the rollups from the events stored before it: the two must agree. So the arithmetic
here is the one both SQL dialects do alike (a float division, then truncation of a positive value).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sync import limits
from sync.protocol import WireEvent

HOUR = 3600
DAY = 86_400
# Fleet-wide counts are split over this many rows per hour and type (by pole), so that concurrent
# batches of different poles seldom wait on the same row lock; queries sum the shards.
SHARDS = 8
# Speeds are kept in buckets of 0.1 km/h, the resolution poles send them in (``speed_kmh`` is rounded
# to one decimal): percentiles read from the buckets are the measured speeds themselves.
SPEED_SCALE = 10
MAX_SPEED_KMH = 1000.0
# Values beyond these are not measurements (a counting line crossed a million times in a minute):
# they are left out of the sums rather than let one bad event swamp a city's figures.
MAX_CROSSINGS = 1_000_000
MAX_SAMPLES = 1_000_000
MAX_PM = 1e9

COUNT_TYPE = "count"
AIR_TYPE = "air_quality"
SPEED_TYPE = "speed"


def hour_of(ts: float) -> int:
    """The start of the hour ``ts`` falls in (``ts`` is never negative: see ``sync.limits``)."""
    return int(ts / HOUR) * HOUR


def day_of(hour: int) -> int:
    return hour - hour % DAY


def shard_of(pole_id: str) -> int:
    return zlib.crc32(pole_id.encode()) % SHARDS


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _whole(value: Any, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        return None
    return value


def crossings_hour(event: WireEvent) -> int:
    start = _number(event.data.get("period_start"))
    return hour_of(start if start is not None and limits.TS_MIN <= start <= limits.TS_MAX else event.ts)


@dataclass(slots=True)
class Rollups:
    """The sums one batch of one pole adds, keyed by bucket."""

    counts: dict[tuple[int, str], int] = field(default_factory=dict)  # (hour, type) -> events
    traffic: dict[tuple[int, str, str, str], int] = field(default_factory=dict)  # (hour, line, direction, class)
    # hour -> [PM2.5 sum weighted by samples, PM2.5 max, PM10 weighted sum, PM10 max, samples]
    air: dict[int, list[float]] = field(default_factory=dict)
    speed: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (hour, bucket) -> [passes, over limit]

    def __bool__(self) -> bool:
        return bool(self.counts)

    def add(self, event: WireEvent) -> None:
        hour = hour_of(event.ts)
        key = (hour, event.type)
        self.counts[key] = self.counts.get(key, 0) + 1
        if event.type == COUNT_TYPE:
            self._crossings(event)
        elif event.type == AIR_TYPE:
            self._air(hour, event.data)
        elif event.type == SPEED_TYPE:
            self._speed(hour, event.data)

    def _crossings(self, event: WireEvent) -> None:
        line, counts = event.data.get("line"), event.data.get("counts")
        if not isinstance(line, str) or not isinstance(counts, dict):
            return
        hour = crossings_hour(event)
        for direction, by_class in counts.items():
            if not isinstance(by_class, dict):
                continue
            for class_, n in by_class.items():
                crossings = _whole(n, MAX_CROSSINGS)
                if crossings is not None:
                    key = (hour, line, direction, class_)
                    self.traffic[key] = self.traffic.get(key, 0) + crossings

    def _air(self, hour: int, data: dict[str, Any]) -> None:
        pm25, pm10 = _number(data.get("pm2_5")), _number(data.get("pm10"))
        if pm25 is None or pm10 is None or not (0 <= pm25 < MAX_PM and 0 <= pm10 < MAX_PM):
            return
        weight = _whole(data.get("samples"), MAX_SAMPLES) or 1  # a mean of n readings weighs n
        sums = self.air.get(hour)
        if sums is None:
            self.air[hour] = [pm25 * weight, pm25, pm10 * weight, pm10, weight]
        else:
            sums[0] += pm25 * weight
            sums[1] = max(sums[1], pm25)
            sums[2] += pm10 * weight
            sums[3] = max(sums[3], pm10)
            sums[4] += weight

    def _speed(self, hour: int, data: dict[str, Any]) -> None:
        kmh = _number(data.get("speed_kmh"))
        if kmh is None or not 0 <= kmh < MAX_SPEED_KMH:
            return
        key = (hour, int(kmh * SPEED_SCALE + 0.5))
        sums = self.speed.setdefault(key, [0, 0])
        sums[0] += 1
        sums[1] += data.get("over_limit") is True

    # Rows for the upserts, sorted: concurrent transactions then lock shared rows in one order.

    def hourly_rows(self) -> list[tuple[int, str, int]]:
        return sorted((hour, type_, n) for (hour, type_), n in self.counts.items())

    def daily_rows(self) -> list[tuple[int, str, int]]:
        days: dict[tuple[int, str], int] = {}
        for (hour, type_), n in self.counts.items():
            key = (day_of(hour), type_)
            days[key] = days.get(key, 0) + n
        return sorted((day, type_, n) for (day, type_), n in days.items())

    def hourly_total_rows(self) -> list[tuple[int, int]]:
        return _totals((hour, n) for (hour, _), n in self.counts.items())

    def daily_total_rows(self) -> list[tuple[int, int]]:
        return _totals((day_of(hour), n) for (hour, _), n in self.counts.items())

    def traffic_rows(self) -> list[tuple[int, str, str, str, int]]:
        return sorted((*key, n) for key, n in self.traffic.items())

    def air_rows(self) -> list[tuple[int, float, float, float, float, int]]:
        return sorted((hour, s[0], s[1], s[2], s[3], int(s[4])) for hour, s in self.air.items())

    def speed_rows(self) -> list[tuple[int, int, int, int]]:
        return sorted((hour, bucket, s[0], s[1]) for (hour, bucket), s in self.speed.items())

    def by_table(self, pole_id: str) -> list[tuple[str, str | int, list[tuple[Any, ...]]]]:
        """What each rollup table gets, for both backends: (table, the key column that leads each row,
        which is the pole or, for the fleet tables, its shard; the sorted rows after it)."""
        hourly, daily, shard = self.hourly_rows(), self.daily_rows(), shard_of(pole_id)
        return [
            ("pole_hourly", pole_id, hourly),
            ("pole_daily", pole_id, daily),
            ("pole_hourly_total", pole_id, self.hourly_total_rows()),
            ("pole_daily_total", pole_id, self.daily_total_rows()),
            ("traffic", pole_id, self.traffic_rows()),
            ("air", pole_id, self.air_rows()),
            ("speed", pole_id, self.speed_rows()),
            ("fleet_hourly", shard, hourly),
            ("fleet_daily", shard, daily),
        ]


def _totals(counts: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: dict[int, int] = {}
    for start, n in counts:
        out[start] = out.get(start, 0) + n
    return sorted(out.items())


def rollups_of(events: Iterable[WireEvent]) -> Rollups:
    out = Rollups()
    for event in events:
        out.add(event)
    return out


_EXTRA_TYPES = frozenset((COUNT_TYPE, AIR_TYPE, SPEED_TYPE))


def rollup_rows(event: WireEvent) -> dict[str, list[dict[str, Any]]] | None:
    """What ``event`` adds to the traffic, air and speed rollups, by these rules, as rows for SQL to sum
    (PostgreSQL's one-statement ingest); None for the other types, which add only to the counts."""
    if event.type not in _EXTRA_TYPES:
        return None
    one = Rollups()
    one.add(event)
    return {
        "traffic": [
            {"hour": h, "line": line, "direction": d, "class": c, "n": n} for h, line, d, c, n in one.traffic_rows()
        ],
        "air": [
            {"hour": h, "pm25_sum": a, "pm25_max": b, "pm10_sum": c, "pm10_max": d, "samples": w}
            for h, a, b, c, d, w in one.air_rows()
        ],
        "speed": [{"hour": h, "bucket": b, "n": n, "over_limit": o} for h, b, n, o in one.speed_rows()],
    }
