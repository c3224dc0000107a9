"""The simulated devices: valid streams for every kind, faults that the reader counts, vanishing and coming back."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hal.sensors.nmea import GpsReading, NmeaParser
from hal.sensors.pms5003 import Pms5003Parser, PmsReading
from hal.sensors.radar import RadarParser, RadarReading
from hal.sensors.sensor import SensorReading
from hal.serialport import SerialSensor
from hal.simulator import Faults, SimulatedSerialDevice, nmea_stream, pms_stream, radar_stream
from tests.sensor_frames import eventually

FAST = {"reconnect_min_s": 0.02, "reconnect_max_s": 0.2}


def first_steps(stream: object, n: int) -> bytes:
    it = iter(stream)  # type: ignore[call-overload]
    return b"".join(next(it)[1] for _ in range(n))


def test_streams_are_valid_for_the_real_parsers() -> None:
    rng = random.Random(1)
    pms = Pms5003Parser().feed(first_steps(pms_stream(rng), 20))
    gps = NmeaParser().feed(first_steps(nmea_stream(rng, location=(-33.86, 151.2)), 20))
    radar = RadarParser("mps").feed(first_steps(radar_stream(rng), 40))
    assert len(pms.readings) == 20 and not pms.errors
    assert len(gps.readings) == 20 and not gps.errors
    assert len(radar.readings) == 40 and not radar.errors
    assert all(1 <= r.pm2_5 <= 150 for r in pms.readings)
    fix = gps.readings[0]
    assert fix.has_fix and fix.lat == pytest.approx(-33.86, abs=0.001) and fix.lon == pytest.approx(151.2, abs=0.001)
    assert all(25 * 0.8 <= r.speed_kmh <= 70 * 1.2 for r in radar.readings)


def test_faults_parse() -> None:
    assert Faults.parse("checksum=0.1, noise=0.5,vanish=0.01") == Faults(checksum=0.1, noise=0.5, vanish=0.01)
    assert Faults.parse("") == Faults()
    with pytest.raises(ValueError, match="unknown fault"):
        Faults.parse("gremlins=1")
    with pytest.raises(ValueError, match="probability"):
        Faults.parse("noise=2")


@pytest.mark.parametrize("kind", ["pms5003", "nmea", "radar"])
async def test_a_clean_device_gives_clean_readings(kind: str) -> None:
    expected = {"pms5003": PmsReading, "nmea": GpsReading, "radar": RadarReading}[kind]
    # Denser traffic than a street's, for a quick test.
    stream = radar_stream(random.Random(3), gap_s=(0.05, 0.1), rate_hz=50) if kind == "radar" else None
    with SimulatedSerialDevice(kind, seed=3, interval_s=0.05, stream=stream) as device:  # type: ignore[arg-type]
        sensor = SerialSensor(device.config("sim", **FAST))
        got: list[SensorReading] = []
        task = asyncio.create_task(sensor.run(got.append))
        try:
            await eventually(lambda: len(got) >= 5, what=f"{kind} readings")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert all(isinstance(r.value, expected) for r in got)
    assert sensor.stats().errors == {}


@pytest.mark.parametrize(
    ("kind", "fault", "error"),
    [
        ("pms5003", "checksum", "checksum"),
        ("nmea", "checksum", "checksum"),
        ("radar", "checksum", "malformed"),
        ("nmea", "truncate", "truncated"),
        ("pms5003", "noise", "noise"),
    ],
)
async def test_injected_faults_are_counted(kind: str, fault: str, error: str) -> None:
    stream = radar_stream(random.Random(5), gap_s=(0.01, 0.02), rate_hz=100) if kind == "radar" else None
    faults = Faults(**{fault: 1.0})
    with SimulatedSerialDevice(kind, faults=faults, seed=5, interval_s=0.02, stream=stream) as device:  # type: ignore[arg-type]
        sensor = SerialSensor(device.config("sim", **FAST))
        task = asyncio.create_task(sensor.run(lambda r: None))
        try:
            await eventually(lambda: sensor.stats().errors.get(error, 0) >= 10, what=f"{error} errors")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if fault == "checksum":
        assert sensor.stats().readings_total == 0  # every frame was bad, none slipped through


async def test_a_vanishing_device_comes_back(tmp_path: Path) -> None:
    link = tmp_path / "by-id" / "usb-Plantower-if00"
    faults = Faults(vanish=4.0, vanish_s=0.2)
    with SimulatedSerialDevice("pms5003", faults=faults, seed=2, interval_s=0.05, link_path=link) as device:
        assert device.port_path == str(link) and link.is_symlink()
        sensor = SerialSensor(device.config("sim", **FAST))
        got: list[SensorReading] = []
        task = asyncio.create_task(sensor.run(got.append))
        try:
            await eventually(lambda: sensor.stats().connects >= 3, timeout=10, what="reconnects")
            count = len(got)
            await eventually(lambda: len(got) > count, what="readings after a return")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    stats = sensor.stats()
    assert device.sent["vanish"] >= 2
    assert stats.errors["disconnected"] >= 2
    assert stats.errors.get("truncated", 0) >= 1  # it vanishes mid-frame
    assert not link.exists()


async def test_unplug_and_replug_by_hand(tmp_path: Path) -> None:
    with SimulatedSerialDevice("nmea", seed=1, interval_s=0.05, link_path=tmp_path / "gps") as device:
        assert os.readlink(device.port_path).startswith("/dev/pts/")
        device.unplug()
        assert not os.path.lexists(device.port_path) and not device.present
        device.replug()
        assert os.path.exists(device.port_path) and device.present
        sensor = SerialSensor(device.config("sim", **FAST))
        got: list[SensorReading] = []
        task = asyncio.create_task(sensor.run(got.append))
        try:
            await eventually(lambda: len(got) >= 2, what="readings from the replugged device")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_runs_as_a_program(tmp_path: Path) -> None:
    link = tmp_path / "ttySIM"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hal.simulator", "radar", "--link", str(link), "--faults", "noise=0.1", "--seed", "1"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == str(link)
        assert link.is_symlink() and os.readlink(link).startswith("/dev/pts/")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    deadline = time.monotonic() + 2
    while os.path.lexists(link) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.lexists(link)
