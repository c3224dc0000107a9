"""The seam between serial sensors and the rest of the pole: readings, stats and the ``Sensor`` interface."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from hal.sensors.config import SensorKind
from hal.sensors.nmea import GpsReading, NmeaParser
from hal.sensors.parser import Parser
from hal.sensors.pms5003 import Pms5003Parser, PmsReading
from hal.sensors.radar import RadarParser, RadarReading, Unit

Reading = PmsReading | GpsReading | RadarReading
SensorState = Literal["idle", "connecting", "connected", "waiting", "stopped"]


@dataclass(frozen=True, slots=True)
class SensorReading:
    """A decoded reading, stamped with the sensor's name and the epoch time its bytes arrived."""

    sensor: str
    kind: SensorKind
    ts: float
    value: Reading


ReadingHandler = Callable[[SensorReading], None]
"""Receives each reading on the event loop thread; must not block (queue it)."""


@dataclass(frozen=True, slots=True)
class SensorStats:
    """A sensor's health for the status page and metrics.

    ``errors`` counts by ``ErrorKind`` value since start; ``last_progress`` is
    when bytes last arrived, ``last_reading_at`` when a reading last decoded.
    """

    name: str
    kind: SensorKind
    port: str
    state: SensorState
    connected: bool
    readings_total: int
    errors: dict[str, int]
    last_reading: dict[str, Any] | None
    last_reading_at: float | None
    last_progress: float | None
    connected_since: float | None
    connects: int
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Sensor(Protocol):
    """A source of readings; ``SerialSensor`` is the one implementation, real or simulated device alike."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> SensorKind: ...

    async def run(self, on_reading: ReadingHandler) -> None:
        """Read until cancelled, reconnecting as needed; never returns otherwise."""
        ...

    def stats(self) -> SensorStats: ...


def new_parser(kind: SensorKind, *, radar_unit: Unit = "mps", live: bool = False) -> Parser[Any]:
    """The parser for ``kind``; ``live`` for a port just opened, which may start mid-report."""
    if kind == "pms5003":
        return Pms5003Parser()
    if kind == "nmea":
        return NmeaParser()
    return RadarParser(radar_unit, mid_stream=live)
