"""The pole's serial sensors as one component: readers, the event task, location, clock check, fusion.

The daemon builds one ``SensorService`` from the pole file and either runs it
whole (``run()``; cancel it to stop, it flushes on the way out) or hands
``components()`` to its supervisor and calls ``aclose()`` after stopping them.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gateway.sensing.air_quality import AirQualityConfig
from gateway.sensing.events import SensorEvents, SensorEventStats
from gateway.sensing.fusion import FusionStats, TrafficFusion
from gateway.sensing.location import ClockStatus, ClockWatch, GpsConfig, GpsFix, LocationProvider
from gateway.sensing.speed import TrafficConfig
from hal.sensors.config import AnySensorConfig
from hal.sensors.sensor import SensorStats
from hal.serialport import SerialSensor
from sync.events import EventSink, Location


@dataclass(frozen=True, slots=True)
class SensorsStatus:
    """Everything the status page shows about sensors, and what the sync status block carries."""

    sensors: list[SensorStats]
    location: Location | None
    gps_fix: GpsFix | None
    clock: ClockStatus
    events: SensorEventStats
    fusion: FusionStats

    def as_dict(self) -> dict[str, Any]:
        return {
            "sensors": [s.as_dict() for s in self.sensors],
            "location": self.location.as_dict() if self.location else None,
            "gps_fix": asdict(self.gps_fix) if self.gps_fix else None,
            "clock": self.clock.as_dict(),
            "events": self.events.as_dict(),
            "fusion": asdict(self.fusion),
        }


class SensorService:
    """Owns the serial readers of the enabled sensors and everything their readings feed."""

    def __init__(
        self,
        sensors: Sequence[AnySensorConfig],
        sink: EventSink,
        *,
        fallback_location: Location | None = None,
        traffic: TrafficConfig | None = None,
        air_quality: AirQualityConfig | None = None,
        gps: GpsConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        gps = gps or GpsConfig()
        enabled = [c for c in sensors if c.enabled]
        self.location = LocationProvider(fallback_location, gps.fix_max_age_s, clock)
        self.clock_watch = ClockWatch(gps.clock_skew_max_s, gps.clock_check_max_age_s, clock)
        self.events = SensorEvents(
            sink,
            enabled,
            location=self.location,
            clock_watch=self.clock_watch,
            traffic=traffic,
            air_quality=air_quality,
            clock=clock,
        )
        self.fusion: TrafficFusion = self.events.fusion
        self.sensors = [SerialSensor(c, clock=clock) for c in enabled]

    def components(self) -> list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]]:
        """Named coroutine factories for a supervisor: each sensor reader and the event task."""
        readers: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
            (f"sensor:{s.name}", functools.partial(s.run, self.events.on_reading)) for s in self.sensors
        ]
        return [*readers, ("sensor-events", self.events.run)]

    async def run(self) -> None:
        """Run everything until cancelled; then stop the readers and flush the last events into the sink."""
        try:
            async with asyncio.TaskGroup() as group:
                for name, factory in self.components():
                    group.create_task(factory(), name=name)
        except asyncio.CancelledError:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Turn unfinished air-quality periods and radar passes into events and write them (readers stopped)."""
        await self.events.aclose()

    def status(self) -> SensorsStatus:
        return SensorsStatus(
            sensors=[s.stats() for s in self.sensors],
            location=self.location.current(),
            gps_fix=self.location.last_fix(),
            clock=self.clock_watch.status(),
            events=self.events.stats(),
            fusion=self.fusion.stats(),
        )
