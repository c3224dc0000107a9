"""Where the pole is and whether its clock is right, from the GPS receiver.

``LocationProvider`` is shared by everything that makes events (the sensor
events, the vision pipeline): a recent valid GPS fix wins, else the surveyed
position from the pole file, else nothing. ``ClockWatch`` compares the host
clock with GPS time so the status page can say when the pole's clock is off
(its timestamps on every event would be off too).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from hal.sensors.nmea import GpsReading
from sync.events import Location

log = structlog.get_logger(__name__)

_SKEW_SAMPLES = 10


class GpsConfig(BaseModel):
    """How GPS readings locate events and check the clock."""

    model_config = ConfigDict(extra="forbid")

    fix_max_age_s: float = Field(
        10.0, gt=0, description="A GPS fix older than this no longer locates events; pole.location is used instead."
    )
    clock_skew_max_s: float = Field(
        2.0, gt=0, description="The status reports the clock as skewed when it differs from GPS time by more than this."
    )
    clock_check_max_age_s: float = Field(
        300.0, gt=0, description="Without GPS time for this long, the clock's state is reported as unknown."
    )


@dataclass(frozen=True, slots=True)
class GpsFix:
    """The newest valid fix and when it arrived (epoch seconds)."""

    lat: float
    lon: float
    fix_quality: int
    satellites: int | None
    at: float


class LocationProvider:
    """The pole's position for events: a fresh GPS fix, else the configured one, else None."""

    def __init__(
        self, fallback: Location | None, fix_max_age_s: float = 10.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._fallback = fallback
        self._max_age = fix_max_age_s
        self._clock = clock
        self._fix: GpsFix | None = None
        self._satellites: int | None = None

    def update(self, reading: GpsReading, received_at: float) -> None:
        if reading.satellites is not None:
            self._satellites = reading.satellites
        if not reading.has_fix:
            return
        assert reading.lat is not None and reading.lon is not None
        self._fix = GpsFix(reading.lat, reading.lon, reading.fix_quality, self._satellites, received_at)

    def current(self) -> Location | None:
        fix = self._fix
        if fix is not None and self._clock() - fix.at <= self._max_age:
            return Location(fix.lat, fix.lon, "gps")
        return self._fallback

    def last_fix(self) -> GpsFix | None:
        return self._fix


@dataclass(frozen=True, slots=True)
class ClockStatus:
    """The host clock against GPS time; ``skew_s`` is host minus GPS (positive: the host is ahead)."""

    state: Literal["unknown", "ok", "skewed"]
    skew_s: float | None
    max_skew_s: float
    checked_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ClockWatch:
    """Tracks the difference between the host clock and the GPS receiver's UTC.

    A sentence reaches us some hundreds of milliseconds after the instant it
    names, which only ever adds to host-minus-GPS; the smallest difference over
    the last few sentences is the best estimate of the true skew.
    """

    def __init__(
        self, max_skew_s: float = 2.0, max_age_s: float = 300.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._max_skew = max_skew_s
        self._max_age = max_age_s
        self._clock = clock
        self._samples: deque[float] = deque(maxlen=_SKEW_SAMPLES)
        self._checked_at: float | None = None
        self._reported: str = "unknown"

    def update(self, gps_utc: dt.datetime, received_at: float) -> None:
        self._samples.append(received_at - gps_utc.timestamp())
        self._checked_at = received_at
        status = self.status()
        if status.state != self._reported:
            if status.state == "skewed":
                log.warning(
                    "clock disagrees with GPS", skew_s=round(status.skew_s or 0.0, 3), max_skew_s=self._max_skew
                )
            elif self._reported == "skewed":
                log.info("clock agrees with GPS again", skew_s=round(status.skew_s or 0.0, 3))
            self._reported = status.state

    def status(self) -> ClockStatus:
        if self._checked_at is None or self._clock() - self._checked_at > self._max_age:
            return ClockStatus("unknown", None, self._max_skew, self._checked_at)
        skew = min(self._samples)
        return ClockStatus("skewed" if abs(skew) > self._max_skew else "ok", skew, self._max_skew, self._checked_at)
