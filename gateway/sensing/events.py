"""Sensor readings to events: the one task between the serial readers and the event sink.

Readers hand each reading over without waiting (``on_reading`` queues it), so a
slow sink (an fsync on an SD card) never stalls a serial port; this task
aggregates (air quality per period, radar reports per pass), keeps the GPS
location and clock check current, feeds radar passes to the traffic fusion and
puts the resulting events into the sink one at a time. An event the sink
refuses is counted and logged, never retried forever; on shutdown ``aclose``
turns unfinished periods and passes into events.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from gateway.sensing.air_quality import AirQualityAverage, AirQualityAverager, AirQualityConfig
from gateway.sensing.fusion import TrafficFusion
from gateway.sensing.location import ClockWatch, LocationProvider
from gateway.sensing.speed import SpeedPass, SpeedPasses, TrafficConfig
from hal.log_throttle import LogThrottle
from hal.sensors.config import AnySensorConfig, RadarConfig
from hal.sensors.nmea import GpsReading
from hal.sensors.pms5003 import PmsReading
from hal.sensors.radar import RadarReading
from hal.sensors.sensor import SensorReading
from sync.events import Accepted, EventSink, NewEvent

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SensorEventStats:
    """``events`` put into the sink by type; readings dropped because this task fell behind; sink refusals."""

    events: dict[str, int]
    readings_dropped: int
    sink_errors: dict[str, int]
    pending_events: int
    queued_readings: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SensorEvents:
    """Turns readings from the configured sensors into events in ``sink``; ``fusion`` takes plate reads."""

    def __init__(
        self,
        sink: EventSink,
        sensors: Sequence[AnySensorConfig],
        *,
        location: LocationProvider,
        clock_watch: ClockWatch,
        traffic: TrafficConfig | None = None,
        air_quality: AirQualityConfig | None = None,
        clock: Callable[[], float] = time.time,
        queue_size: int = 4096,
        tick_s: float = 0.25,
    ) -> None:
        traffic = traffic or TrafficConfig()
        air_quality = air_quality or AirQualityConfig()
        self._sink = sink
        self._location = location
        self._clock_watch = clock_watch
        self._clock = clock
        self._tick_s = tick_s
        self._averagers = {
            c.name: AirQualityAverager(c.name, air_quality.period_s) for c in sensors if c.kind == "pms5003"
        }
        self._passes = {c.name: SpeedPasses(c, traffic) for c in sensors if isinstance(c, RadarConfig)}
        self.fusion = TrafficFusion(traffic, self.emit, location.current, clock)
        self._queue: asyncio.Queue[SensorReading] = asyncio.Queue(queue_size)
        self._pending: deque[NewEvent] = deque()
        self._writing: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._events: Counter[str] = Counter()
        self._sink_errors: Counter[str] = Counter()
        self._dropped = 0
        self._throttle = LogThrottle()

    def on_reading(self, reading: SensorReading) -> None:
        """The readers' callback: queue and return at once."""
        try:
            self._queue.put_nowait(reading)
        except asyncio.QueueFull:
            self._dropped += 1
            held = self._throttle.allow("dropped")
            if held is not None:
                log.warning("sensor readings dropped: event task behind", dropped=self._dropped, held_back=held)

    def emit(self, event: NewEvent) -> None:
        """Queue an event for the sink; safe from any thread."""
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self._pending.append, event)
        else:
            self._pending.append(event)

    def stats(self) -> SensorEventStats:
        return SensorEventStats(
            dict(self._events), self._dropped, dict(self._sink_errors), len(self._pending), self._queue.qsize()
        )

    async def run(self) -> None:
        """Until cancelled: handle readings as they come, close periods and passes on time, write events."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        while True:
            reading: SensorReading | None = None
            try:
                # Not wait_for: on Python 3.11 it can swallow the cancellation that stops this task.
                async with asyncio.timeout(self._tick_s):
                    reading = await self._queue.get()
            except TimeoutError:
                pass
            if reading is not None:
                self._handle(reading)
            self._drain_queue()
            self._tick(self._clock())
            # The outbox gathers puts for up to its commit window: readings and ticks go on meanwhile.
            if self._pending and (self._writing is None or self._writing.done()):
                self._writing = asyncio.create_task(self._write(), name="sensor-events-write")

    async def aclose(self) -> None:
        """At shutdown, after ``run`` is cancelled: handle what is queued, close what is open, write it all."""
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)
        self._drain_queue()
        for averager in self._averagers.values():
            self._air_quality(averager.flush())
        for passes in self._passes.values():
            self._speed(passes.flush())
        await self._write()

    def _drain_queue(self) -> None:
        while not self._queue.empty():
            self._handle(self._queue.get_nowait())

    def _handle(self, reading: SensorReading) -> None:
        value = reading.value
        if isinstance(value, PmsReading):
            averager = self._averagers.get(reading.sensor)
            if averager is not None:
                self._air_quality(averager.add(value, reading.ts))
        elif isinstance(value, RadarReading):
            passes = self._passes.get(reading.sensor)
            if passes is not None:
                self._speed(passes.add(value, reading.ts))
        elif isinstance(value, GpsReading):
            self._location.update(value, reading.ts)
            utc = value.utc
            # Only RMC has the date; a receiver without a fix may still be counting from a wrong time.
            if value.has_fix and isinstance(utc, dt.datetime):
                self._clock_watch.update(utc, reading.ts)

    def _tick(self, now: float) -> None:
        for averager in self._averagers.values():
            self._air_quality(averager.due(now))
        for passes in self._passes.values():
            self._speed(passes.due(now))
        self.fusion.expire(now)

    def _air_quality(self, average: AirQualityAverage | None) -> None:
        if average is not None:
            self.emit(average.event(self._location.current()))

    def _speed(self, closed: list[SpeedPass]) -> None:
        for speed_pass in closed:
            self.emit(speed_pass.event(self._location.current()))
            self.fusion.on_pass(speed_pass)

    async def _write(self) -> None:
        """Put what is pending, all in one call (one commit), then whatever came meanwhile."""
        while self._pending:
            batch = list(self._pending)
            receipts: list[Accepted | None]
            try:
                receipts = list(await self._sink.put_many(batch))
            except Exception:
                # One bad event fails the whole call before any is queued: put them one by one instead.
                receipts = [await self._put_one(event) for event in batch]
            for event, receipt in zip(batch, receipts, strict=True):
                if receipt is not None and receipt.withheld is None:  # else the event policy kept it out
                    self._events[event.type] += 1
            # Removed only after the puts returned: events interrupted by shutdown are put again by aclose.
            for _ in batch:
                self._pending.popleft()

    async def _put_one(self, event: NewEvent) -> Accepted | None:
        try:
            return await self._sink.put(event)
        except Exception as exc:
            self._sink_errors[type(exc).__name__] += 1
            held = self._throttle.allow(f"sink:{type(exc).__name__}")
            if held is not None:
                log.error("sensor event not stored", type=event.type, error=repr(exc), held_back=held)
            return None
