"""NMEA 0183 GPS receivers: GGA and RMC sentences from any talker (GP, GN, GL, ...).

The framing (finding ``$...*hh`` sentences in a noisy byte stream) is ours,
because it has to be incremental and count what it throws away; the checksum and
the fields are pynmeagps's, a maintained NMEA library, so that the degree-minute
arithmetic, hemispheres, times and dates are not re-derived here. Other
sentence types (GSV, GSA, VTG, proprietary) are skipped without being errors.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pynmeagps import NMEAMessageError, NMEAParseError, NMEAReader, NMEATypeError
from pynmeagps.nmeahelpers import calc_checksum

from hal.sensors.parser import ErrorKind, Parsed, StreamState

# NMEA 0183 caps a sentence at 82 characters with "$" and CRLF; receivers with long
# talker-specific fields exceed it a little, so allow some slack before calling it noise.
MAX_SENTENCE = 120
SENTENCES = ("GGA", "RMC")
_LINE_END = re.compile(rb"[\r\n]")
_HEADER_START = re.compile(rb"[A-Z]{2}")
_PARSE_ERRORS = (NMEAMessageError, NMEAParseError, NMEATypeError, ValueError, TypeError, IndexError, AttributeError)
# RMC's mode indicator (NMEA 2.3+) mapped onto GGA's fix quality numbers, so both
# sentences answer "is this a fix, and what kind" the same way.
_RMC_MODE_QUALITY = {"N": 0, "A": 1, "D": 2, "P": 3, "R": 4, "F": 5, "E": 6, "M": 7, "S": 8}


@dataclass(frozen=True, slots=True)
class GpsReading:
    """One GGA or RMC sentence.

    ``fix_quality`` is GGA's (0 none, 1 GPS, 2 DGPS, 4 RTK, 5 float RTK, 6 dead
    reckoning...); for RMC it is derived from the status and mode indicator.
    RMC carries the date, so only RMC readings give a full UTC timestamp.
    """

    sentence: str
    time: dt.time | None
    date: dt.date | None
    lat: float | None
    lon: float | None
    fix_quality: int
    satellites: int | None
    speed_knots: float | None

    @property
    def kind(self) -> Literal["GGA", "RMC"]:
        return "GGA" if self.sentence.endswith("GGA") else "RMC"

    @property
    def has_fix(self) -> bool:
        return self.fix_quality > 0 and self.lat is not None and self.lon is not None

    @property
    def utc(self) -> dt.datetime | dt.time | None:
        """The full UTC timestamp for RMC, the UTC time of day for GGA."""
        if self.time is None:
            return None
        if self.date is None:
            return self.time.replace(tzinfo=dt.UTC)
        return dt.datetime.combine(self.date, self.time, tzinfo=dt.UTC)

    def as_dict(self) -> dict[str, Any]:
        utc = self.utc
        out: dict[str, Any] = {
            "sentence": self.sentence,
            "utc": utc.isoformat() if utc is not None else None,
            "lat": self.lat,
            "lon": self.lon,
            "fix_quality": self.fix_quality,
            "satellites": self.satellites,
        }
        if self.speed_knots is not None:
            out["speed_knots"] = self.speed_knots
        return out


class _Malformed(Exception):
    """A sentence whose checksum is right but whose fields are not."""


class NmeaParser(StreamState):
    """Finds NMEA sentences in a byte stream and decodes GGA and RMC.

    Resynchronises on ``$`` and line ends. Bytes before the first line end of a
    stream are not an error (a reader that opens the port mid-sentence sees the
    tail of one); after that, bytes outside sentences are noise, counted once per run.
    """

    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0
        """Well-formed sentences of types this parser does not decode."""

    def feed(self, data: bytes) -> Parsed[GpsReading]:
        out: Parsed[GpsReading] = Parsed()
        buf = self._buf
        buf += data
        while True:
            start = buf.find(b"$")
            self._discard(start if start >= 0 else len(buf), out)
            if start < 0:
                return out
            # Bounded, so that a megabyte of "$"-riddled noise costs linear time, not quadratic.
            end_match = _LINE_END.search(buf, 1, MAX_SENTENCE + 1)
            end = end_match.start() if end_match else min(len(buf), MAX_SENTENCE + 1)
            restart = buf.find(b"$", 1, end)
            if restart > 0:
                # A new sentence began before this one ended; a lone "$" in noise is not a sentence.
                if _HEADER_START.match(buf, 1):
                    out.error(ErrorKind.TRUNCATED)
                    self._fresh = self._in_noise = False
                else:
                    self._noise(out)
                del buf[:restart]
                continue
            if end_match is None:
                if len(buf) <= MAX_SENTENCE:
                    return out
                # No sentence is this long: a "$" in noise, or a line end lost.
                self._noise(out)
                del buf[:1]
                continue
            line = bytes(buf[:end])
            del buf[: end + 1]
            self._sentence(line, out)

    def flush(self) -> Parsed[GpsReading]:
        out: Parsed[GpsReading] = Parsed()
        if self._buf.startswith(b"$"):
            out.error(ErrorKind.TRUNCATED)
        self._restart()
        return out

    def _discard(self, n: int, out: Parsed[GpsReading]) -> None:
        """Drop ``n`` bytes that are not part of a sentence."""
        if n <= 0:
            return
        junk = bytes(self._buf[:n])
        del self._buf[:n]
        if self._fresh:
            end = _LINE_END.search(junk)
            if end is None:
                self._fresh_skipped += n
                if self._fresh_skipped <= MAX_SENTENCE:
                    return  # still possibly the tail of a sentence cut by the port opening
                self._fresh = False
            else:
                self._fresh = False
                junk = junk[end.end() :]
        if junk.strip(b"\r\n\t "):
            self._noise(out)

    def _noise(self, out: Parsed[GpsReading]) -> None:
        self._fresh = False
        if not self._in_noise:
            out.error(ErrorKind.NOISE)
            self._in_noise = True

    def _sentence(self, raw: bytes, out: Parsed[GpsReading]) -> None:
        self._fresh = False
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            out.error(ErrorKind.NON_UTF8)
            return
        self._in_noise = False
        body, star, given = text[1:].partition("*")
        if not star or len(given) != 2 or calc_checksum(body) != given.upper():
            out.error(ErrorKind.CHECKSUM)
            return
        if not text.isascii() or not text.isprintable():
            out.error(ErrorKind.MALFORMED)
            return
        fields = body.split(",")
        header = fields[0]
        if len(header) != 5 or header[2:] not in SENTENCES:
            self.skipped += 1
            return
        try:
            msg = NMEAReader.parse(text)
            reading = _gga(header, fields, msg) if header.endswith("GGA") else _rmc(header, fields, msg)
        except (_Malformed, *_PARSE_ERRORS):
            out.error(ErrorKind.MALFORMED)
            return
        out.readings.append(reading)


def _field(fields: list[str], i: int) -> str:
    return fields[i] if i < len(fields) else ""


def _attr(msg: object, name: str) -> Any:
    if not hasattr(msg, name):
        raise _Malformed(f"missing {name}")
    return getattr(msg, name)


def _time(fields: list[str], msg: object) -> dt.time | None:
    value = _attr(msg, "time")
    if isinstance(value, dt.time):
        return value
    if fields[1]:
        raise _Malformed("time")
    return None


def _position(fields: list[str], lat_at: int, msg: object) -> tuple[float | None, float | None]:
    """Signed decimal degrees, or (None, None) when the receiver left the position empty."""
    raw_lat, ns, raw_lon, ew = (_field(fields, lat_at + k) for k in range(4))
    if not raw_lat and not raw_lon:
        return None, None
    if ns not in ("N", "S") or ew not in ("E", "W"):
        raise _Malformed("hemisphere")
    lat, lon = _attr(msg, "lat"), _attr(msg, "lon")
    if not isinstance(lat, float | int) or not isinstance(lon, float | int):
        raise _Malformed("position")
    if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
        raise _Malformed("position out of range")
    return float(lat), float(lon)


def _optional_int(value: object, raw: str) -> int | None:
    if isinstance(value, int) and value >= 0:
        return value
    if raw:
        raise _Malformed("integer field")
    return None


def _gga(header: str, fields: list[str], msg: object) -> GpsReading:
    lat, lon = _position(fields, 2, msg)
    quality = _optional_int(_attr(msg, "quality"), _field(fields, 6))
    return GpsReading(
        sentence=header,
        time=_time(fields, msg),
        date=None,
        lat=lat,
        lon=lon,
        fix_quality=quality or 0,
        satellites=_optional_int(_attr(msg, "numSV"), _field(fields, 7)),
        speed_knots=None,
    )


def _rmc(header: str, fields: list[str], msg: object) -> GpsReading:
    status = _attr(msg, "status")
    if status not in ("A", "V"):
        raise _Malformed("status")
    lat, lon = _position(fields, 3, msg)
    date = _attr(msg, "date")
    if not isinstance(date, dt.date):
        if _field(fields, 9):
            raise _Malformed("date")
        date = None
    speed = _attr(msg, "spd")
    if not isinstance(speed, float | int) or not math.isfinite(speed) or speed < 0:
        if _field(fields, 7):
            raise _Malformed("speed")
        speed = None
    mode = getattr(msg, "posMode", "") or ""
    if status == "V":
        quality = 0
    elif mode:
        if mode not in _RMC_MODE_QUALITY:
            raise _Malformed("mode")
        quality = _RMC_MODE_QUALITY[mode]
    else:
        quality = 1
    return GpsReading(
        sentence=header,
        time=_time(fields, msg),
        date=date,
        lat=lat,
        lon=lon,
        fix_quality=quality,
        satellites=None,
        speed_knots=float(speed) if speed is not None else None,
    )
