"""Sensor configuration: the documented example validates, mistakes are named by key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from gateway.configfile import ConfigError, validate
from gateway.sensing.air_quality import AirQualityConfig
from gateway.sensing.location import GpsConfig
from gateway.sensing.speed import TrafficConfig
from hal.sensors.config import NmeaConfig, Pms5003Config, RadarConfig, SensorList

EXAMPLE = """
[[sensors]]
name = "air"
kind = "pms5003"
port = "/dev/ttyAMA0"

[[sensors]]
name = "gps"
kind = "nmea"
port = "/dev/serial/by-id/usb-u-blox_GNSS_receiver-if00"
baudrate = 38400

[[sensors]]
name = "radar"
kind = "radar"
port = "/dev/serial/by-id/usb-OmniPreSense_OPS243-if00"
unit = "kmh"
direction = "inbound"
speed_limit_kmh = 30.0
cameras = ["north"]

[traffic]
speed_limit_kmh = 50.0
window_s = 2.0

[air_quality]
period_s = 60

[gps]
fix_max_age_s = 10.0
clock_skew_max_s = 2.0
"""


class PoleSensors(BaseModel):
    """The sensor tables as the pole file holds them."""

    model_config = ConfigDict(extra="forbid")

    sensors: SensorList = Field(default_factory=list, description="Serial sensors.")
    traffic: TrafficConfig = Field(default_factory=TrafficConfig, description="Speed and violations.")
    air_quality: AirQualityConfig = Field(default_factory=AirQualityConfig, description="Air-quality averaging.")
    gps: GpsConfig = Field(default_factory=GpsConfig, description="GPS location and clock check.")


def load(text: str, path: Path = Path("pole.toml")) -> PoleSensors:
    return validate(PoleSensors, tomllib.loads(text), path, env={})


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(text)
    return caught.value.problems


def test_the_documented_example_validates() -> None:
    config = load(EXAMPLE)
    air, gps, radar = config.sensors
    assert isinstance(air, Pms5003Config) and air.baudrate == 9600 and air.silence_timeout_s == 15.0
    assert isinstance(gps, NmeaConfig) and gps.baudrate == 38400
    assert isinstance(radar, RadarConfig) and radar.unit == "kmh" and radar.silence_timeout_s is None
    assert radar.cameras == ["north"] and radar.speed_limit_kmh == 30.0
    assert config.traffic.speed_limit_kmh == 50.0


def test_defaults_need_nothing() -> None:
    config = load("")
    assert config.sensors == [] and config.air_quality.period_s == 60 and config.gps.clock_skew_max_s == 2.0


def test_every_field_is_described() -> None:
    for model in (Pms5003Config, NmeaConfig, RadarConfig, TrafficConfig, AirQualityConfig, GpsConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[[sensors]]\nname = "gps"\nkind = "nmea"\nport = "/dev/ttyS0"\nunit = "mph"\n',
            "sensors.0.nmea.unit: unknown key",
        ),
        ('[[sensors]]\nname = "r"\nkind = "radar"\nport = "/dev/ttyS0"\nunit = "knots"\n', "sensors.0.radar.unit: "),
        (
            '[[sensors]]\nname = "r"\nkind = "radar"\nport = "/dev/ttyS0"\ndirection = "sideways"\n',
            "sensors.0.radar.direction: ",
        ),
        (
            '[[sensors]]\nname = "a"\nkind = "pms5003"\nport = "ttyUSB0"\n',
            "sensors.0.pms5003.port: Value error, must be an absolute device path",
        ),
        (
            '[[sensors]]\nname = "a"\nkind = "pms5003"\nport = "/dev/ttyUSB0"\nbaudrate = 9601\n',
            "sensors.0.pms5003.baudrate: Value error, not a standard baud rate",
        ),
        ('[[sensors]]\nname = "a"\nkind = "lidar"\nport = "/dev/ttyUSB0"\n', "sensors.0: Input tag 'lidar'"),
        ('[[sensors]]\nkind = "nmea"\nport = "/dev/ttyUSB0"\n', "sensors.0.nmea.name: required but missing"),
        ('[[sensors]]\nname = "has space"\nkind = "nmea"\nport = "/dev/ttyUSB0"\n', "sensors.0.nmea.name: "),
        (
            '[[sensors]]\nname = "a"\nkind = "nmea"\nport = "/dev/x"\nreconnect_min_s = 5\nreconnect_max_s = 1\n',
            "sensors.0.nmea: Value error, reconnect_max_s must be at least reconnect_min_s",
        ),
        (
            '[[sensors]]\nname = "a"\nkind = "nmea"\nport = "/dev/x"\n[[sensors]]\nname = "a"\nkind = "radar"\n'
            'port = "/dev/y"\n',
            "sensors: Value error, two sensors have the name 'a'",
        ),
        (
            '[[sensors]]\nname = "a"\nkind = "nmea"\nport = "/dev/x"\n[[sensors]]\nname = "b"\nkind = "radar"\n'
            'port = "/dev/x"\n',
            "sensors: Value error, two sensors have the port '/dev/x'",
        ),
        ("[traffic]\nspeed_limit_kmh = 0\n", "traffic.speed_limit_kmh: "),
        ("[traffic]\nmax_pass_s = 0.5\npass_gap_s = 1.0\n", "traffic: Value error, max_pass_s must be at least"),
        ("[air_quality]\nperiod_s = 5\n", "air_quality.period_s: "),
        ("[gps]\nclock_skew = 3\n", "gps.clock_skew: unknown key"),
    ],
)
def test_mistakes_are_named(toml: str, expected: str) -> None:
    found = problems(toml)
    assert any(p.startswith(expected) for p in found), found
