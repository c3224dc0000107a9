"""Radar reports grouped into vehicle passes, and the ``speed`` events made of them.

A Doppler radar reports ten or twenty speeds a second while a vehicle is in its
beam. One event per report would flood the outbox and count every car fifteen
times, so reports in one direction with no gap longer than ``pass_gap_s`` form
one pass, and each pass is one ``speed`` event with its peak and mean speed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hal.sensors.config import RadarConfig
from hal.sensors.radar import Direction, RadarReading
from sync.events import Location, NewEvent, Priority

_pass_ids = itertools.count(1)


class TrafficConfig(BaseModel):
    """Speed measurement and the pairing of speeding vehicles with plate reads."""

    model_config = ConfigDict(extra="forbid")

    speed_limit_kmh: float = Field(50.0, gt=0, description="Speed limit (km/h); a radar's own speed_limit_kmh wins.")
    window_s: float = Field(
        2.0,
        ge=0,
        description="A plate read at most this many seconds before or after an over-limit speed pairs with it.",
    )
    pass_gap_s: float = Field(
        1.0, gt=0, description="Radar reports further apart than this belong to different vehicles."
    )
    max_pass_s: float = Field(
        10.0, gt=0, description="A pass is closed after this long even while reports keep coming (queues, tailgating)."
    )
    min_speed_kmh: float = Field(
        3.0, ge=0, description="Reports slower than this are ignored (zero reports, swaying trees, the odd pigeon)."
    )
    plate_delay_s: float = Field(
        10.0,
        ge=0,
        description="How late a plate read may reach the pairing after its frame was taken (vision latency).",
    )

    @model_validator(mode="after")
    def _gap_within_pass(self) -> TrafficConfig:
        if self.max_pass_s < self.pass_gap_s:
            raise ValueError("max_pass_s must be at least pass_gap_s")
        return self


@dataclass(frozen=True, slots=True)
class SpeedPass:
    """One vehicle through one radar's beam. Times are epoch seconds, speeds km/h.

    ``over_first_ts`` / ``over_last_ts`` bound the reports above the limit
    (None when none was): the span a plate read is paired against.
    """

    id: int
    sensor: str
    direction: Direction
    start_ts: float
    end_ts: float
    peak_kmh: float
    peak_ts: float
    mean_kmh: float
    readings: int
    limit_kmh: float
    over_first_ts: float | None
    over_last_ts: float | None
    cameras: tuple[str, ...]

    @property
    def over_limit(self) -> bool:
        return self.over_first_ts is not None

    def event(self, location: Location | None) -> NewEvent:
        return NewEvent(
            type="speed",
            data={
                "sensor": self.sensor,
                "direction": self.direction,
                "speed_kmh": round(self.peak_kmh, 1),
                "mean_speed_kmh": round(self.mean_kmh, 1),
                "readings": self.readings,
                "duration_s": round(self.end_ts - self.start_ts, 2),
                "limit_kmh": self.limit_kmh,
                "over_limit": self.over_limit,
            },
            # Telemetry: a stream of traffic statistics, thousands a day on a busy street; what is
            # actionable about a pass (a speeding vehicle with a plate) becomes an alert of its own.
            priority=Priority.TELEMETRY,
            ts=self.peak_ts,
            location=location,
        )


class _Open:
    __slots__ = ("start", "end", "peak", "peak_ts", "total", "n", "over_first", "over_last")

    def __init__(self, ts: float, kmh: float) -> None:
        self.start = self.end = self.peak_ts = ts
        self.peak = self.total = kmh
        self.n = 1
        self.over_first: float | None = None
        self.over_last: float | None = None

    def add(self, ts: float, kmh: float) -> None:
        self.end = ts
        self.total += kmh
        self.n += 1
        if kmh > self.peak:
            self.peak, self.peak_ts = kmh, ts


class SpeedPasses:
    """Groups one radar's reports into passes, one open pass per direction."""

    def __init__(self, radar: RadarConfig, traffic: TrafficConfig) -> None:
        self._sensor = radar.name
        self._directions: set[str] = {"inbound", "outbound"} if radar.direction == "both" else {radar.direction}
        self._limit = radar.speed_limit_kmh or traffic.speed_limit_kmh
        self._cameras = tuple(radar.cameras)
        self._gap = traffic.pass_gap_s
        self._max = traffic.max_pass_s
        self._min = traffic.min_speed_kmh
        self._open: dict[Direction, _Open] = {}
        self.ignored = 0
        """Reports outside the configured direction or below the minimum speed."""

    def add(self, reading: RadarReading, ts: float) -> list[SpeedPass]:
        """Count a report; returns the passes it closed (a gap, or a pass that ran too long)."""
        kmh = reading.speed_kmh
        direction = reading.direction
        if direction not in self._directions or kmh < self._min:
            self.ignored += 1
            return []
        closed = self.due(ts)
        current = self._open.get(direction)
        if current is None:
            current = self._open[direction] = _Open(ts, kmh)
        else:
            current.add(ts, kmh)
        if kmh > self._limit:
            current.over_first = current.over_first if current.over_first is not None else ts
            current.over_last = ts
        return closed

    def due(self, now: float) -> list[SpeedPass]:
        """Close the passes with no report for ``pass_gap_s``, or open for ``max_pass_s``."""
        done = [d for d, p in self._open.items() if now - p.end > self._gap or now - p.start >= self._max]
        return [self._close(d) for d in done]

    def flush(self) -> list[SpeedPass]:
        return [self._close(d) for d in list(self._open)]

    def _close(self, direction: Direction) -> SpeedPass:
        p = self._open.pop(direction)
        return SpeedPass(
            id=next(_pass_ids),
            sensor=self._sensor,
            direction=direction,
            start_ts=p.start,
            end_ts=p.end,
            peak_kmh=p.peak,
            peak_ts=p.peak_ts,
            mean_kmh=p.total / p.n,
            readings=p.n,
            limit_kmh=self._limit,
            over_first_ts=p.over_first,
            over_last_ts=p.over_last,
            cameras=self._cameras,
        )
