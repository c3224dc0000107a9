"""Configuration of the pole's serial sensors: the ``[[sensors]]`` tables of the pole file.

One strict model per sensor kind, told apart by ``kind``, so that an option of
one kind on another (a radar ``unit`` on the GPS) is an error naming the key.
"""

from __future__ import annotations

from typing import Annotated, Literal

import serial
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from hal.sensors.radar import Unit

SensorKind = Literal["pms5003", "nmea", "radar"]
SENSOR_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"


class _SerialSensor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        ..., pattern=SENSOR_NAME, description="Name in events, logs, metrics and the status page; unique on the pole."
    )
    port: str = Field(
        ...,
        description="Device path (/dev/ttyAMA0, or better /dev/serial/by-id/... which survives re-plugging into "
        "another USB socket) or a pyserial URL such as rfc2217://host:port.",
    )
    enabled: bool = Field(True, description="Read this sensor; false keeps the entry but leaves the port alone.")
    reconnect_min_s: float = Field(0.5, gt=0, description="First wait before reopening a port that failed or vanished.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Longest wait between attempts; waits double up to it.")

    @field_validator("port")
    @classmethod
    def _absolute_or_url(cls, port: str) -> str:
        if not (port.startswith("/") or "://" in port):
            raise ValueError("must be an absolute device path (/dev/...) or a pyserial URL")
        return port

    @field_validator("baudrate", check_fields=False)
    @classmethod
    def _standard_baudrate(cls, baudrate: int) -> int:
        if baudrate not in serial.SerialBase.BAUDRATES:
            raise ValueError("not a standard baud rate (such as 4800, 9600, 19200, 38400, 57600 or 115200)")
        return baudrate

    @model_validator(mode="after")
    def _backoff_order(self) -> _SerialSensor:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        return self


class Pms5003Config(_SerialSensor):
    """A Plantower PMS5003 particulate sensor in its default active mode."""

    kind: Literal["pms5003"] = Field(..., description="Plantower PMS5003 particulate sensor.")
    baudrate: int = Field(9600, description="The PMS5003 talks at 9600 baud only.")
    silence_timeout_s: float | None = Field(
        15.0, gt=0, description="Reopen the port after this long without a byte (active mode sends every 1-3 s)."
    )


class NmeaConfig(_SerialSensor):
    """An NMEA 0183 GPS receiver sending GGA and/or RMC sentences."""

    kind: Literal["nmea"] = Field(..., description="NMEA 0183 GPS receiver.")
    baudrate: int = Field(9600, description="Baud rate set on the receiver (most ship at 9600, some at 4800 or 38400).")
    silence_timeout_s: float | None = Field(
        10.0, gt=0, description="Reopen the port after this long without a byte (receivers send every second)."
    )


class RadarConfig(_SerialSensor):
    """A Doppler radar speed sensor in the OmniPreSense OPS243 style."""

    kind: Literal["radar"] = Field(..., description="Doppler radar speed sensor, OPS243 style.")
    baudrate: int = Field(19200, description="Baud rate of the sensor's UART (ignored over its USB port).")
    silence_timeout_s: float | None = Field(
        None,
        gt=0,
        description="Reopen the port after this long without a byte; off by default, "
        "because a radar only reports while something moves.",
    )
    unit: Unit = Field(
        "mps",
        description="Units the sensor is set to (US/UK/UM/UF/UC), for reports that carry no unit label: "
        "mps, kmh, mph, fps or cmps.",
    )
    direction: Literal["inbound", "outbound", "both"] = Field(
        "both", description="Which traffic to measure: approaching (inbound), receding (outbound) or both."
    )
    speed_limit_kmh: float | None = Field(
        None, gt=0, description="Speed limit on the lane this radar watches; unset uses traffic.speed_limit_kmh."
    )
    cameras: list[str] = Field(
        default_factory=list,
        description="Cameras whose plate reads may pair with this radar's speeds; empty pairs with every camera.",
    )


AnySensorConfig = Pms5003Config | NmeaConfig | RadarConfig
SensorConfig = Annotated[AnySensorConfig, Field(discriminator="kind")]
"""One ``[[sensors]]`` table, its model chosen by ``kind``."""


def _unique(sensors: list[AnySensorConfig]) -> list[AnySensorConfig]:
    for attr in ("name", "port"):
        seen: set[str] = set()
        for sensor in sensors:
            value = getattr(sensor, attr)
            if value in seen:
                raise ValueError(f"two sensors have the {attr} {value!r}")
            seen.add(value)
    return sensors


SensorList = Annotated[list[SensorConfig], AfterValidator(_unique)]
"""The type of the pole file's ``sensors`` key: unique names and ports."""
