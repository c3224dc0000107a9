"""Air quality: PMS5003 readings averaged over aligned periods into ``air_quality`` events.

Periods are aligned to the clock (12:00:00-12:01:00, not "a minute since the
daemon started"), so the receiver can line up poles and readings from
different days without resampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from pydantic import BaseModel, ConfigDict, Field

from hal.sensors.pms5003 import PmsReading
from sync.events import Location, NewEvent, Priority

_FIELDS = tuple(f.name for f in fields(PmsReading))


class AirQualityConfig(BaseModel):
    """Averaging of particulate readings into events."""

    model_config = ConfigDict(extra="forbid")

    period_s: int = Field(
        60, ge=10, le=3600, description="Readings are averaged over clock-aligned periods of this many seconds."
    )


@dataclass(frozen=True, slots=True)
class AirQualityAverage:
    """The mean of one sensor's readings over one period."""

    sensor: str
    period_start: float
    period_s: int
    samples: int
    means: dict[str, float]
    partial: bool

    def event(self, location: Location | None) -> NewEvent:
        data: dict[str, object] = {
            "sensor": self.sensor,
            "period_s": self.period_s,
            "samples": self.samples,
            **self.means,
        }
        if self.partial:
            data["partial"] = True
        return NewEvent(
            type="air_quality", data=data, priority=Priority.TELEMETRY, ts=self.period_start, location=location
        )


class AirQualityAverager:
    """Accumulates one sensor's readings and hands back each period when it is over."""

    def __init__(self, sensor: str, period_s: int = 60) -> None:
        self._sensor = sensor
        self._period = period_s
        self._start: float | None = None
        self._sums = dict.fromkeys(_FIELDS, 0.0)
        self._n = 0

    def add(self, reading: PmsReading, ts: float) -> AirQualityAverage | None:
        """Count ``reading``; the previous period's average if ``ts`` begins a new one."""
        start = math.floor(ts / self._period) * self._period
        done = self._close(partial=False) if self._start is not None and start != self._start else None
        self._start = start
        self._n += 1
        for name in _FIELDS:
            self._sums[name] += getattr(reading, name)
        return done

    def due(self, now: float) -> AirQualityAverage | None:
        """The current period's average once ``now`` is past its end (no reading needed to close it)."""
        if self._start is not None and now >= self._start + self._period:
            return self._close(partial=False)
        return None

    def flush(self) -> AirQualityAverage | None:
        """The unfinished period, marked partial (at shutdown)."""
        return self._close(partial=True) if self._start is not None else None

    def _close(self, partial: bool) -> AirQualityAverage:
        assert self._start is not None
        average = AirQualityAverage(
            sensor=self._sensor,
            period_start=self._start,
            period_s=self._period,
            samples=self._n,
            means={name: round(total / self._n, 1) for name, total in self._sums.items()},
            partial=partial,
        )
        self._start = None
        self._n = 0
        self._sums = dict.fromkeys(_FIELDS, 0.0)
        return average
