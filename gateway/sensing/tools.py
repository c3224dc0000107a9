"""``smartpole sensors decode KIND FILE``: what a raw serial capture holds, for technicians.

Feeds the capture through the daemon's own parsers and prints one JSON object
per reading, then ``{"readings": N, "errors": {...}}`` with the error counts by
kind (``checksum``, ``truncated``, ``noise``, ``non_utf8``, ``malformed``).
A capture is whatever came off the wire, e.g. ``cat /dev/ttyUSB0 > capture.bin``.
Radar reports without a unit label are taken to be in m/s, the sensor's default.

Exit status: 0 when at least one reading was decoded, 1 when the capture was
read to the end but held no reading, 2 for an unknown KIND or a FILE that
cannot be read (message on stderr).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Any, BinaryIO, cast, get_args

import orjson

from hal.sensors.config import SensorKind
from hal.sensors.parser import Parsed
from hal.sensors.sensor import new_parser

EXIT_DECODED = 0
EXIT_NOTHING = 1
EXIT_USAGE = 2
KINDS: tuple[str, ...] = get_args(SensorKind)
_CHUNK = 65536


def decode_stream(kind: SensorKind, stream: BinaryIO, out: BinaryIO) -> tuple[int, Counter[str]]:
    """Decode ``stream`` to JSON lines on ``out``; the number of readings and the errors by kind."""
    parser = new_parser(kind)
    readings = 0
    errors: Counter[str] = Counter()

    def emit(parsed: Parsed[Any]) -> None:
        nonlocal readings
        for reading in parsed.readings:
            out.write(orjson.dumps(reading.as_dict(), option=orjson.OPT_APPEND_NEWLINE))
        readings += len(parsed.readings)
        errors.update(parsed.errors)

    while chunk := stream.read(_CHUNK):
        emit(parser.feed(chunk))
    emit(parser.flush())
    return readings, errors


def decode_main(kind: str, file: str) -> int:
    """Decode FILE (``-`` for stdin) as KIND; the exit status (see the module doc)."""
    if kind not in KINDS:
        print(f"unknown sensor kind {kind!r}; expected one of {', '.join(KINDS)}", file=sys.stderr)
        return EXIT_USAGE
    sensor_kind = cast(SensorKind, kind)
    out = sys.stdout.buffer
    try:
        if file == "-":
            readings, errors = decode_stream(sensor_kind, sys.stdin.buffer, out)
        else:
            with open(file, "rb") as stream:
                readings, errors = decode_stream(sensor_kind, stream, out)
        out.write(orjson.dumps({"readings": readings, "errors": dict(errors)}, option=orjson.OPT_APPEND_NEWLINE))
        out.flush()
    except BrokenPipeError:
        # The reader (head, less) has seen enough; keep the interpreter's final flush from complaining.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_DECODED
    except OSError as exc:
        print(f"{file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_DECODED if readings else EXIT_NOTHING
