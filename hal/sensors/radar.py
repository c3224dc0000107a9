"""Doppler radar speed sensors in the OmniPreSense OPS243 style: one report per line.

The sensor prints one line per report, in whichever of its output modes is set:

- a bare speed, ``12.3`` (units set on the sensor: m/s by default);
- with units reporting on, ``"mph",12.3``;
- with time or magnitude reporting on, more numbers before the speed, speed last:
  ``137.429,3.6`` or ``"mps",137.429,55.1,3.6``;
- JSON mode, ``{"speed":12.3,"unit":"mps","direction":"inbound"}``;
- blank lines (or a zero speed) when its blank-reporting option is on.

Approaching ("inbound") objects have positive speeds, receding ("outbound")
ones negative; a JSON report with an explicit direction is signed the same way.
Other JSON objects (the sensor's answers to commands) are skipped. There is no
vendor library for this format; it is a line split and a float.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from hal.sensors.parser import ErrorKind, Parsed

Unit = Literal["mps", "kmh", "mph", "fps", "cmps"]
Direction = Literal["inbound", "outbound"]

# Every spelling OPS24x firmware uses for a unit (command answers and report labels).
UNIT_ALIASES: dict[str, Unit] = {
    "mps": "mps",
    "m/s": "mps",
    "m-per-sec": "mps",
    "ms": "mps",
    "kmh": "kmh",
    "kmph": "kmh",
    "km/h": "kmh",
    "kph": "kmh",
    "km-per-hr": "kmh",
    "mph": "mph",
    "fps": "fps",
    "ft/s": "fps",
    "ft-per-sec": "fps",
    "cmps": "cmps",
    "cm/s": "cmps",
    "cm-per-sec": "cmps",
}
TO_KMH: dict[Unit, float] = {"mps": 3.6, "kmh": 1.0, "mph": 1.609344, "fps": 1.09728, "cmps": 0.036}
MAX_LINE = 96
MAX_SPEED_KMH = 1000.0  # beyond any road vehicle and any OPS24x range: line noise that parsed
_LINE_END = re.compile(rb"[\r\n]")
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


@dataclass(frozen=True, slots=True)
class RadarReading:
    """One speed report: the signed value as sent and its unit."""

    speed: float
    unit: Unit

    @property
    def direction(self) -> Direction:
        return "outbound" if self.speed < 0 else "inbound"

    @property
    def speed_kmh(self) -> float:
        """Unsigned speed in km/h."""
        return abs(self.speed) * TO_KMH[self.unit]

    def as_dict(self) -> dict[str, Any]:
        return {"speed": self.speed, "unit": self.unit}


class _Skip(Exception):
    """A well-formed line that is not a speed report."""


class RadarParser:
    """Splits the stream into lines and decodes each as a speed report.

    ``unit`` is what the sensor is set to when its lines carry no unit label.
    With ``mid_stream`` (a live port just opened) everything before the first
    line end is dropped: a report cut at its start would read as another
    number ("17.4" seen from its second byte is 7.4, from its third 4).
    """

    def __init__(self, unit: Unit = "mps", *, mid_stream: bool = False) -> None:
        self._unit = unit
        self._mid_stream = mid_stream
        self._synced = not mid_stream
        self._buf = bytearray()
        self._overlong = False
        self.skipped = 0
        """Well-formed lines that are not speed reports (the sensor's answers to commands)."""

    def feed(self, data: bytes) -> Parsed[RadarReading]:
        out: Parsed[RadarReading] = Parsed()
        buf = self._buf
        buf += data
        pos = 0
        while (end := _LINE_END.search(buf, pos)) is not None:
            line = bytes(buf[pos : end.start()])
            pos = end.end()
            if not self._synced or self._overlong:
                # The end of a line cut by the port opening, or of one already counted as noise.
                self._synced = True
                self._overlong = False
            else:
                self._line(line, out)
        del buf[:pos]
        if len(buf) > MAX_LINE:
            if self._synced and not self._overlong:
                out.error(ErrorKind.NOISE)
            self._overlong = True
            buf.clear()
        return out

    def flush(self) -> Parsed[RadarReading]:
        out: Parsed[RadarReading] = Parsed()
        if self._buf.strip() and self._synced and not self._overlong:
            out.error(ErrorKind.TRUNCATED)
        self._buf.clear()
        self._overlong = False
        self._synced = not self._mid_stream
        return out

    def _line(self, raw: bytes, out: Parsed[RadarReading]) -> None:
        if len(raw) > MAX_LINE:
            out.error(ErrorKind.NOISE)
            return
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            out.error(ErrorKind.NON_UTF8)
            return
        if not text:
            return  # CRLF line ends, or the sensor's blank reports
        try:
            reading = self._json(text) if text.startswith("{") else self._csv(text)
        except _Skip:
            self.skipped += 1
            return
        except ValueError:
            out.error(ErrorKind.MALFORMED)
            return
        if reading.speed_kmh > MAX_SPEED_KMH:
            out.error(ErrorKind.MALFORMED)
            return
        out.readings.append(reading)

    def _csv(self, text: str) -> RadarReading:
        unit = self._unit
        numbers: list[float] = []
        for part in (p.strip() for p in text.split(",")):
            if len(part) >= 2 and part[0] == part[-1] == '"':
                unit = _unit(part[1:-1])
            else:
                numbers.append(_number(part))
        if not numbers:
            raise ValueError("no speed")
        return RadarReading(numbers[-1], unit)

    def _json(self, text: str) -> RadarReading:
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError("json") from exc
        if not isinstance(doc, dict):
            raise ValueError("json")
        if "speed" not in doc:
            raise _Skip()
        speed = _number(doc["speed"])
        unit_label = doc.get("unit", doc.get("units"))
        unit = _unit(unit_label) if unit_label is not None else self._unit
        direction = doc.get("direction")
        if direction == "outbound":
            speed = -abs(speed)
        elif direction == "inbound":
            speed = abs(speed)
        elif direction is not None:
            raise ValueError("direction")
        return RadarReading(speed, unit)


def _unit(label: object) -> Unit:
    if not isinstance(label, str) or label.strip().lower() not in UNIT_ALIASES:
        raise ValueError(f"unknown unit {label!r}")
    return UNIT_ALIASES[label.strip().lower()]


def _number(value: object) -> float:
    if isinstance(value, str):
        if not _DECIMAL.fullmatch(value.strip()):
            raise ValueError("not a number")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("not a number")
    return float(value)
