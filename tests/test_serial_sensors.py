"""Every driver through real pyserial on pseudo-terminals: readings, unplug and replug, faults, no stalls."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import serial
import structlog.testing

from hal.log_throttle import LogThrottle
from hal.sensors.config import NmeaConfig, Pms5003Config, RadarConfig
from hal.sensors.nmea import GpsReading
from hal.sensors.pms5003 import PmsReading
from hal.sensors.radar import RadarReading
from hal.sensors.sensor import SensorReading
from hal.serialport import SerialSensor
from tests.pty_device import PtyDevice
from tests.sensor_frames import GGA_CLASSIC, RMC_CLASSIC, eventually, pms_frame, radar_line

FAST = {"reconnect_min_s": 0.02, "reconnect_max_s": 0.1}


@pytest.fixture
def device(tmp_path: Path) -> Iterator[PtyDevice]:
    dev = PtyDevice(tmp_path / "ttyUSB0")
    yield dev
    dev.close()


class Running:
    """A SerialSensor task and what it delivered."""

    def __init__(self, sensor: SerialSensor) -> None:
        self.sensor = sensor
        self.readings: list[SensorReading] = []
        self.task = asyncio.create_task(sensor.run(self.readings.append))

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def run() -> AsyncIterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        if not r.task.done():
            await r.stop()


def start(run: list[Running], sensor: SerialSensor) -> Running:
    r = Running(sensor)
    run.append(r)
    return r


async def connected(r: Running, connects: int = 1) -> None:
    await eventually(lambda: r.sensor.stats().connected and r.sensor.stats().connects >= connects, what="connect")


async def test_pms5003_readings_arrive(device: PtyDevice, run: list[Running]) -> None:
    r = start(run, SerialSensor(Pms5003Config(name="air", kind="pms5003", port=str(device.path), **FAST)))
    await connected(r)
    device.write(pms_frame(pm1_0=3, pm2_5=258, pm10=900) + pms_frame(pm2_5=4))
    await eventually(lambda: len(r.readings) == 2, what="two readings")
    first = r.readings[0]
    assert (first.sensor, first.kind) == ("air", "pms5003")
    assert first.value == PmsReading(3, 258, 900, 900, 260, 55, 7, 2, 1)
    assert abs(first.ts - time.time()) < 5
    stats = r.sensor.stats()
    assert stats.readings_total == 2 and stats.errors == {} and stats.state == "connected"
    assert stats.last_reading is not None and stats.last_reading["pm2_5"] == 4
    assert stats.last_reading_at is not None and stats.last_progress is not None


async def test_nmea_readings_arrive(device: PtyDevice, run: list[Running]) -> None:
    r = start(run, SerialSensor(NmeaConfig(name="gps", kind="nmea", port=str(device.path), **FAST)))
    await connected(r)
    device.write(GGA_CLASSIC + RMC_CLASSIC)
    await eventually(lambda: len(r.readings) == 2)
    gga, rmc = (x.value for x in r.readings)
    assert isinstance(gga, GpsReading) and isinstance(rmc, GpsReading)
    assert gga.satellites == 8 and gga.lat == pytest.approx(48.1173)
    assert rmc.speed_knots == pytest.approx(22.4)


async def test_radar_readings_arrive_after_the_first_line(device: PtyDevice, run: list[Running]) -> None:
    port = str(device.path)
    r = start(run, SerialSensor(RadarConfig(name="radar", kind="radar", port=port, unit="kmh", **FAST)))
    await connected(r)
    device.write(b"7.4\r\n" + radar_line(51.5) + radar_line(-12.0) + radar_line(30.0, unit="mph"))
    await eventually(lambda: len(r.readings) == 3)
    assert [x.value for x in r.readings] == [
        RadarReading(51.5, "kmh"),
        RadarReading(-12.0, "kmh"),
        RadarReading(30.0, "mph"),
    ]


@pytest.mark.parametrize(
    ("config", "frame"),
    [
        (Pms5003Config(name="air", kind="pms5003", port="/x", **FAST), pms_frame()),
        (NmeaConfig(name="gps", kind="nmea", port="/x", **FAST), GGA_CLASSIC),
        (RadarConfig(name="radar", kind="radar", port="/x", **FAST), radar_line(10.0)),
    ],
    ids=["pms5003", "nmea", "radar"],
)
async def test_unplug_mid_frame_and_replug_recover(
    device: PtyDevice, run: list[Running], config: Pms5003Config | NmeaConfig | RadarConfig, frame: bytes
) -> None:
    sensor = SerialSensor(config.model_copy(update={"port": str(device.path)}))
    r = start(run, sensor)
    await connected(r)
    device.write(b"\r\n" + frame + frame)
    await eventually(lambda: len(r.readings) == 2, what="readings before unplug")

    before = sensor.stats().last_progress
    device.write(frame[: len(frame) // 2])
    await eventually(lambda: sensor.stats().last_progress != before, what="half a frame read")
    device.unplug()
    await eventually(lambda: not sensor.stats().connected, what="disconnect noticed")
    await eventually(lambda: sensor.stats().errors.get("open_failed", 0) >= 2, what="reopen attempts")
    stats = sensor.stats()
    assert stats.errors["disconnected"] == 1
    assert stats.errors["truncated"] == 1  # the frame the device vanished in
    assert stats.state in ("waiting", "connecting")

    device.replug()
    await connected(r, connects=2)
    device.write(b"\r\n" + frame)
    await eventually(lambda: len(r.readings) == 3, what="readings after replug")
    assert sensor.stats().connects == 2 and sensor.stats().connected


async def test_faults_on_the_wire_are_counted_per_kind(device: PtyDevice, run: list[Running]) -> None:
    sensor = SerialSensor(Pms5003Config(name="air", kind="pms5003", port=str(device.path), **FAST))
    r = start(run, sensor)
    await connected(r)
    device.write(
        pms_frame(pm2_5=1)
        + pms_frame(checksum=7)
        + pms_frame(checksum=8)
        + pms_frame()[:12]
        + pms_frame(pm2_5=2)
        + b"\x00\x01\x02 some line noise"
        + pms_frame(pm2_5=3)
    )
    await eventually(lambda: len(r.readings) == 3)
    assert [x.value.pm2_5 for x in r.readings] == [1, 2, 3]  # type: ignore[union-attr]
    assert sensor.stats().errors == {"checksum": 2, "truncated": 1, "noise": 1}
    assert sensor.stats().last_error is not None


async def test_a_silent_port_is_counted_and_reopened(device: PtyDevice, run: list[Running]) -> None:
    config = NmeaConfig(name="gps", kind="nmea", port=str(device.path), silence_timeout_s=0.2, **FAST)
    sensor = SerialSensor(config)
    r = start(run, sensor)
    await connected(r)
    device.write(GGA_CLASSIC)
    await eventually(lambda: len(r.readings) == 1)
    await eventually(lambda: sensor.stats().errors.get("silent", 0) >= 1, what="silence noticed")
    await connected(r, connects=2)
    device.write(RMC_CLASSIC)
    await eventually(lambda: len(r.readings) == 2)


async def test_absent_device_is_retried_with_backoff(tmp_path: Path, run: list[Running]) -> None:
    config = RadarConfig(
        name="radar", kind="radar", port=str(tmp_path / "never"), reconnect_min_s=0.05, reconnect_max_s=0.4
    )
    sensor = SerialSensor(config)
    start(run, sensor)
    await asyncio.sleep(1.5)
    attempts = sensor.stats().errors["open_failed"]
    # Without backoff this would be hundreds; with 0.05, 0.1, 0.2, 0.4, 0.4... it is a handful.
    assert 3 <= attempts <= 10, attempts
    assert sensor.stats().state == "waiting" and not sensor.stats().connected
    device = PtyDevice(tmp_path / "never")
    try:
        await eventually(lambda: sensor.stats().connected, timeout=3)
    finally:
        device.close()


async def test_garbage_flood_does_not_stall_the_event_loop_nor_flood_the_log(
    device: PtyDevice, run: list[Running]
) -> None:
    with structlog.testing.capture_logs() as logs:
        sensor = SerialSensor(Pms5003Config(name="air", kind="pms5003", port=str(device.path), **FAST))
        r = start(run, sensor)
        await connected(r)
        await flood(device, r)
    assert sensor.stats().errors["checksum"] > 100
    # The first error of each kind is logged; the rest wait for the next minute.
    assert sorted(e["error"] for e in logs if e["event"] == "sensor error") == ["checksum", "noise"]


async def flood(device: PtyDevice, r: Running) -> None:
    # 2 MB of noise with frame starts sprinkled in, written from another thread as fast as the pty takes it.
    junk = (bytes(range(256)) * 8 + b"\x42\x4d\x00\x1c" + bytes(40)) * 950
    writer = threading.Thread(target=device.write, args=(junk + pms_frame(pm2_5=77),))
    writer.start()
    worst = 0.0
    while writer.is_alive() or not r.readings:
        before = time.monotonic()
        await asyncio.sleep(0.01)
        worst = max(worst, time.monotonic() - before - 0.01)
    writer.join()
    assert r.readings[-1].value.pm2_5 == 77  # type: ignore[union-attr]
    assert worst < 0.25, f"event loop stalled for {worst:.3f} s"


async def test_a_parser_bug_is_counted_and_reading_goes_on(
    device: PtyDevice, run: list[Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hal.sensors import pms5003

    original = pms5003.Pms5003Parser.feed
    calls = {"n": 0}

    def feed_that_fails_once(self: pms5003.Pms5003Parser, data: bytes) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("bug")
        return original(self, data)

    monkeypatch.setattr(pms5003.Pms5003Parser, "feed", feed_that_fails_once)
    sensor = SerialSensor(Pms5003Config(name="air", kind="pms5003", port=str(device.path), **FAST))
    r = start(run, sensor)
    await connected(r)
    device.write(pms_frame(pm2_5=1))
    await eventually(lambda: sensor.stats().errors.get("internal") == 1)
    device.write(pms_frame(pm2_5=2))
    await eventually(lambda: len(r.readings) == 1)
    assert r.readings[0].value.pm2_5 == 2  # type: ignore[union-attr]
    assert sensor.stats().connected


async def test_stopping_closes_the_port(device: PtyDevice, run: list[Running]) -> None:
    sensor = SerialSensor(Pms5003Config(name="air", kind="pms5003", port=str(device.path), **FAST))
    r = start(run, sensor)
    await connected(r)
    await r.stop()
    assert sensor.stats().state == "stopped" and not sensor.stats().connected
    # The port is free again: exclusive opening by a new reader works.
    again = start(run, SerialSensor(Pms5003Config(name="air", kind="pms5003", port=str(device.path), **FAST)))
    await connected(again)


def test_log_throttle_lets_one_line_a_minute_through_per_key() -> None:
    now = [0.0]
    throttle = LogThrottle(60.0, clock=lambda: now[0])
    assert throttle.allow("checksum") == 0
    assert throttle.allow("noise") == 0
    assert [throttle.allow("checksum") for _ in range(5)] == [None] * 5
    now[0] = 61.0
    assert throttle.allow("checksum") == 5
    assert throttle.allow("checksum") is None


async def test_cancelling_a_busy_reader_always_stops_it(device: PtyDevice, run: list[Running]) -> None:
    # A cancellation landing just as a read completes must not be lost (asyncio.wait_for on 3.11 loses it).
    stop = threading.Event()

    def stream() -> None:
        frame = GGA_CLASSIC
        while not stop.is_set():
            try:
                if not device.offer(frame * 4):
                    time.sleep(0.005)  # full: no reader between two of them
            except OSError:
                return

    writer = threading.Thread(target=stream)
    writer.start()
    try:
        for _ in range(40):
            r = Running(SerialSensor(NmeaConfig(name="gps", kind="nmea", port=str(device.path), **FAST)))
            await eventually(lambda r=r: len(r.readings) > 0, what="readings")
            r.task.cancel()
            await asyncio.wait({r.task}, timeout=3)  # waits without cancelling anything itself
            stopped = r.task.done()
            while not r.task.done():  # stop it anyway, so that a failure fails rather than hangs
                r.task.cancel()
                await asyncio.wait({r.task}, timeout=0.1)
            assert stopped, "the reader ignored its cancellation"
    finally:
        stop.set()
        device.unplug()
        writer.join()
        device.replug()


async def test_cancelled_while_opening_leaves_the_port_free(
    device: PtyDevice, run: list[Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = serial.serial_for_url
    opened = threading.Event()

    def slow_open(*args: object, **kwargs: object) -> serial.SerialBase:
        time.sleep(0.3)  # a USB adapter that takes its time; the reader is cancelled meanwhile
        port = real_open(*args, **kwargs)
        opened.set()
        return port

    monkeypatch.setattr(serial, "serial_for_url", slow_open)
    r = start(run, SerialSensor(Pms5003Config(name="air", kind="pms5003", port=str(device.path), **FAST)))
    await asyncio.sleep(0.1)
    await r.stop()
    await asyncio.to_thread(opened.wait, 5)
    await asyncio.sleep(0.1)
    # Nothing holds the port's exclusive lock now.
    try:
        serial.Serial(str(device.path), exclusive=True).close()
        free = True
    except serial.SerialException:
        free = False
    assert free, "a port opened after the cancellation was left open"
