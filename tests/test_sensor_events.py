"""Readings to events in a real outbox: air quality per minute, speed passes, GPS location, the clock check."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.sensing.air_quality import AirQualityConfig
from gateway.sensing.events import SensorEvents
from gateway.sensing.location import ClockWatch, GpsConfig, LocationProvider
from gateway.sensing.service import SensorService
from gateway.sensing.sightings import PlateSighting
from gateway.sensing.speed import TrafficConfig
from gateway.vision.privacy import PlatePolicy
from hal.sensors.config import NmeaConfig, Pms5003Config, RadarConfig
from hal.sensors.nmea import GpsReading
from hal.sensors.pms5003 import PmsReading
from hal.sensors.radar import RadarReading
from hal.sensors.sensor import SensorReading
from sync.events import Accepted, Location, NewEvent
from sync.outbox import Outbox
from tests.pty_device import PtyDevice
from tests.sensor_frames import eventually, gga, nmea_time, pms_frame, radar_line, rmc

MINUTE = 1_790_000_040.0  # a minute boundary
assert MINUTE % 60 == 0
CONFIGURED = Location(52.0907, 5.1214, "config")
AIR = Pms5003Config(name="air", kind="pms5003", port="/dev/ttyAIR")
GPS = NmeaConfig(name="gps", kind="nmea", port="/dev/ttyGPS")
RADAR = RadarConfig(name="radar", kind="radar", port="/dev/ttyRADAR", unit="mps")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "outbox.db")
    yield box
    await box.close()


async def stored(outbox: Outbox) -> list[dict[str, Any]]:
    records = await outbox.next_batch(1000, 10**8)
    return sorted((json.loads(r.body) for r in records), key=lambda e: e["seq"])


def pms(pm2_5: int, pm10: int = 20) -> PmsReading:
    return PmsReading(pm2_5 // 2, pm2_5, pm10, 1000, 300, 60, 8, 2, 1)


def fix(lat: float, lon: float, sentence: str = "GNGGA") -> GpsReading:
    return GpsReading(sentence, dt.time(9, 0), None, lat, lon, 1, 9, None)


class Hub:
    """A SensorEvents task on a fake clock, fed recorded readings."""

    def __init__(self, outbox: Outbox, clock: Clock, fallback: Location | None = CONFIGURED, **kw: Any) -> None:
        self.clock = clock
        self.location = LocationProvider(fallback, 10.0, clock)
        self.clock_watch = ClockWatch(2.0, 300.0, clock)
        self.events = SensorEvents(
            outbox,
            [AIR, GPS, RADAR],
            location=self.location,
            clock_watch=self.clock_watch,
            clock=clock,
            tick_s=0.01,
            **kw,
        )
        self.task = asyncio.create_task(self.events.run())

    def feed(self, sensor: str, kind: str, ts: float, value: Any) -> None:
        self.events.on_reading(SensorReading(sensor, kind, ts, value))  # type: ignore[arg-type]

    async def settle(self) -> None:
        await eventually(lambda: self.events.stats().queued_readings == 0 and self.events.stats().pending_events == 0)
        await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.events.aclose()


async def test_air_quality_is_averaged_per_clock_minute(outbox: Outbox) -> None:
    clock = Clock(MINUTE)
    hub = Hub(outbox, clock)
    for offset, value in ((1.0, 10), (20.0, 20), (59.9, 33)):
        hub.feed("air", "pms5003", MINUTE + offset, pms(value, pm10=value + 1))
    await hub.settle()
    assert await stored(outbox) == []  # the minute is not over
    clock.now = MINUTE + 61
    hub.feed("air", "pms5003", MINUTE + 61, pms(4))
    await hub.settle()
    clock.now = MINUTE + 120.5  # the second minute ends without a reading after it
    await hub.settle()
    await hub.stop()
    first, second = await stored(outbox)
    assert first["type"] == "air_quality" and first["priority"] == "telemetry"
    assert first["ts"] == MINUTE and second["ts"] == MINUTE + 60
    assert first["location"] == {"lat": 52.0907, "lon": 5.1214, "source": "config"}
    assert first["data"] == {
        "sensor": "air",
        "period_s": 60,
        "samples": 3,
        "pm1_0": 10.3,
        "pm2_5": 21.0,
        "pm10": 22.0,
        "particles_0_3": 1000.0,
        "particles_0_5": 300.0,
        "particles_1_0": 60.0,
        "particles_2_5": 8.0,
        "particles_5_0": 2.0,
        "particles_10": 1.0,
    }
    assert second["data"]["samples"] == 1 and second["data"]["pm2_5"] == 4.0


async def test_shutdown_writes_the_unfinished_period_as_partial(outbox: Outbox) -> None:
    clock = Clock(MINUTE + 10)
    hub = Hub(outbox, clock, air_quality=AirQualityConfig(period_s=30))
    hub.feed("air", "pms5003", MINUTE + 5, pms(12))
    await hub.settle()
    await hub.stop()
    (event,) = await stored(outbox)
    assert event["data"]["partial"] is True and event["data"]["period_s"] == 30 and event["ts"] == MINUTE


async def test_location_comes_from_a_fresh_fix_else_from_config(outbox: Outbox) -> None:
    clock = Clock(MINUTE)
    hub = Hub(outbox, clock)
    hub.feed("gps", "nmea", MINUTE, GpsReading("GNGGA", None, None, None, None, 0, 3, None))  # no fix yet
    hub.feed("air", "pms5003", MINUTE + 1, pms(5))
    clock.now = MINUTE + 60.5
    await hub.settle()
    hub.feed("air", "pms5003", MINUTE + 62, pms(6))
    hub.feed("gps", "nmea", MINUTE + 118, fix(52.3731, 4.8922))  # a receiver that has just found its fix
    clock.now = MINUTE + 120.5
    await hub.settle()
    hub.feed("air", "pms5003", MINUTE + 121, pms(7))
    clock.now = MINUTE + 180.5  # the fix is two minutes old now
    await hub.settle()
    await hub.stop()
    sources = [e["location"] for e in await stored(outbox)]
    assert sources == [
        {"lat": 52.0907, "lon": 5.1214, "source": "config"},
        {"lat": 52.3731, "lon": 4.8922, "source": "gps"},
        {"lat": 52.0907, "lon": 5.1214, "source": "config"},
    ]
    fix_seen = hub.location.last_fix()
    assert fix_seen is not None and fix_seen.satellites == 9


async def test_no_fix_and_no_configured_position_means_no_location(outbox: Outbox) -> None:
    clock = Clock(MINUTE + 1)
    hub = Hub(outbox, clock, fallback=None)
    hub.feed("air", "pms5003", MINUTE + 1, pms(5))
    await hub.settle()
    await hub.stop()
    (event,) = await stored(outbox)
    assert event["location"] is None


async def test_clock_skew_against_gps_time_shows_in_status(outbox: Outbox) -> None:
    clock = Clock(MINUTE)
    hub = Hub(outbox, clock)
    assert hub.clock_watch.status().state == "unknown"
    gps_time = dt.datetime.fromtimestamp(MINUTE, dt.UTC)
    rmc_at = lambda when, status_fix=True: GpsReading(  # noqa: E731
        "GNRMC",
        when.time(),
        when.date(),
        52.1 if status_fix else None,
        5.1 if status_fix else None,
        1 if status_fix else 0,
        None,
        0.0,
    )
    # The host clock runs 5.3 s ahead of GPS.
    hub.feed("gps", "nmea", MINUTE + 5.3, rmc_at(gps_time))
    hub.feed("gps", "nmea", MINUTE + 6.4, rmc_at(gps_time + dt.timedelta(seconds=1)))
    await hub.settle()
    status = hub.clock_watch.status()
    assert status.state == "skewed" and status.skew_s == pytest.approx(5.3) and status.max_skew_s == 2.0
    # A receiver without a fix, and GGA (no date), do not count.
    hub.feed("gps", "nmea", MINUTE + 7, rmc_at(gps_time + dt.timedelta(seconds=7), status_fix=False))
    hub.feed("gps", "nmea", MINUTE + 7, fix(52.1, 5.1))
    await hub.settle()
    assert hub.clock_watch.status().checked_at == MINUTE + 6.4
    # Once the host clock is corrected, sentences agree within latency.
    hub.feed("gps", "nmea", MINUTE + 8.2, rmc_at(gps_time + dt.timedelta(seconds=8)))
    await hub.settle()
    status = hub.clock_watch.status()
    assert status.state == "ok" and status.skew_s == pytest.approx(0.2)
    clock.now = MINUTE + 400
    assert hub.clock_watch.status().state == "unknown"
    await hub.stop()


async def test_radar_reports_become_one_speed_event_per_pass(outbox: Outbox) -> None:
    clock = Clock(MINUTE)
    hub = Hub(outbox, clock, traffic=TrafficConfig(speed_limit_kmh=50, pass_gap_s=0.5))
    for i in range(12):  # ~15 m/s towards the radar, 10 reports a second
        hub.feed("radar", "radar", MINUTE + i * 0.1, RadarReading(14.5 + (i % 3) * 0.5, "mps"))
    clock.now = MINUTE + 1.0
    await hub.settle()
    assert await stored(outbox) == []  # the pass is still open
    clock.now = MINUTE + 2.0
    await hub.settle()
    await hub.stop()
    (event,) = await stored(outbox)
    assert event["type"] == "speed" and event["priority"] == "telemetry"
    assert event["ts"] == pytest.approx(MINUTE + 0.2)
    assert event["data"] == {
        "sensor": "radar",
        "direction": "inbound",
        "speed_kmh": 55.8,
        "mean_speed_kmh": 54.0,
        "readings": 12,
        "duration_s": 1.1,
        "limit_kmh": 50.0,
        "over_limit": True,
    }
    assert hub.events.stats().events == {"speed": 1}


class FailingSink:
    def __init__(self) -> None:
        self.puts = 0

    async def put(self, event: NewEvent) -> Accepted:
        self.puts += 1
        raise OSError("disk on fire")

    async def put_many(self, events: list[NewEvent]) -> list[Accepted]:
        raise OSError("disk on fire")


async def test_a_failing_sink_is_counted_and_does_not_stop_the_task() -> None:
    sink = FailingSink()
    clock = Clock(MINUTE + 1)
    events = SensorEvents(
        sink, [AIR], location=LocationProvider(None), clock_watch=ClockWatch(), clock=clock, tick_s=0.01
    )
    task = asyncio.create_task(events.run())
    events.on_reading(SensorReading("air", "pms5003", MINUTE + 1, pms(5)))
    clock.now = MINUTE + 61
    await eventually(lambda: sink.puts == 1)
    events.on_reading(SensorReading("air", "pms5003", MINUTE + 61, pms(5)))
    clock.now = MINUTE + 121
    await eventually(lambda: sink.puts == 2)
    assert not task.done()
    assert events.stats().sink_errors == {"OSError": 2} and events.stats().events == {}
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_full_reading_queue_drops_and_counts() -> None:
    events = SensorEvents(FailingSink(), [AIR], location=LocationProvider(None), clock_watch=ClockWatch(), queue_size=3)
    for _ in range(5):  # the task is not running: nothing drains the queue
        events.on_reading(SensorReading("air", "pms5003", MINUTE, pms(5)))
    assert events.stats().readings_dropped == 2 and events.stats().queued_readings == 3


async def test_serial_devices_to_outbox_end_to_end(tmp_path: Path, outbox: Outbox) -> None:
    """Real ptys and pyserial, through the service, to a real outbox; plus a plate read from the vision side."""
    air, gps, radar_dev = (PtyDevice(tmp_path / name) for name in ("ttyAIR", "ttyGPS", "ttyRADAR"))
    fast = {"reconnect_min_s": 0.02, "reconnect_max_s": 0.1}
    service = SensorService(
        [
            Pms5003Config(name="air", kind="pms5003", port=str(air.path), **fast),
            NmeaConfig(name="gps", kind="nmea", port=str(gps.path), **fast),
            RadarConfig(name="radar", kind="radar", port=str(radar_dev.path), unit="kmh", **fast),
            RadarConfig(name="spare", kind="radar", port=str(tmp_path / "absent"), enabled=False),
        ],
        outbox,
        fallback_location=CONFIGURED,
        traffic=TrafficConfig(speed_limit_kmh=50, pass_gap_s=0.3, window_s=3),
        gps=GpsConfig(clock_skew_max_s=2.0),
    )
    assert [s.name for s in service.sensors] == ["air", "gps", "radar"]
    task = asyncio.create_task(service.run())
    try:
        await eventually(lambda: all(s.connected for s in service.status().sensors), what="all connected")
        hhmmss, ddmmyy = nmea_time(time.time())
        gps.write(
            b"\r\n"
            + gga(time_=hhmmss, lat="4851.3960", lon="00221.0520")
            + rmc(time_=hhmmss, date=ddmmyy, lat="4851.3960", lon="00221.0520")
        )
        await eventually(
            lambda: service.location.current() is not None and service.location.current().source == "gps",
            what="GPS fix",
        )  # type: ignore[union-attr]
        assert service.status().clock.state == "ok"
        air.write(pms_frame(pm2_5=17) + pms_frame(pm2_5=19))
        radar_dev.write(b"\r\n" + b"".join(radar_line(v) for v in (45.0, 58.5, 61.0, 57.0)))
        service.fusion.on_plate(
            PlateSighting(
                ts=time.time(),
                camera="cam0",
                track_id=3,
                plate=PlatePolicy().fields("AB-123-C"),
                evidence_jpeg=b"\xff\xd8jpeg\xff\xd9",
            )
        )
        await eventually(lambda: service.status().events.events.get("traffic_violation") == 1, what="violation")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for dev in (air, gps, radar_dev):
            dev.close()

    events = {e["type"]: e for e in await stored(outbox)}
    assert set(events) == {"air_quality", "speed", "traffic_violation"}
    paris = {"lat": pytest.approx(48 + 51.396 / 60), "lon": pytest.approx(2 + 21.052 / 60), "source": "gps"}
    for event in events.values():
        assert event["location"] == paris
    assert events["air_quality"]["priority"] == "telemetry" and events["air_quality"]["data"]["pm2_5"] == 18.0
    assert events["air_quality"]["data"]["partial"] is True  # flushed at shutdown
    assert events["speed"]["priority"] == "telemetry" and events["speed"]["data"]["speed_kmh"] == 61.0
    violation = events["traffic_violation"]
    assert violation["priority"] == "alert" and violation["data"]["plate_policy"] == "drop"
    assert violation["data"]["speed_kmh"] == 61.0 and "AB123C" not in json.dumps(violation)
    (sha,) = violation["media"]
    assert await outbox.media(sha) == b"\xff\xd8jpeg\xff\xd9"
    status = service.status()
    assert [s.state for s in status.sensors] == ["stopped"] * 3
    assert status.as_dict()["sensors"][0]["readings_total"] == 2


async def test_cancelling_a_busy_event_task_always_stops_it(outbox: Outbox) -> None:
    # A cancellation landing as a reading arrives must not be lost (asyncio.wait_for on 3.11 loses it).
    events = SensorEvents(outbox, [RADAR], location=LocationProvider(None), clock_watch=ClockWatch(), tick_s=0.05)

    async def produce() -> None:
        while True:
            events.on_reading(SensorReading("radar", "radar", time.time(), RadarReading(1.0, "mps")))
            await asyncio.sleep(0)

    producer = asyncio.create_task(produce())
    try:
        for _ in range(50):
            task = asyncio.create_task(events.run())
            await asyncio.sleep(0.002)
            producer.cancel()  # the producer's last put and this cancellation land in the same loop turn
            await asyncio.gather(producer, return_exceptions=True)
            events.on_reading(SensorReading("radar", "radar", time.time(), RadarReading(1.0, "mps")))
            task.cancel()
            await asyncio.wait({task}, timeout=2)
            stopped = task.done()
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            assert stopped, "the event task ignored its cancellation"
            producer = asyncio.create_task(produce())
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
