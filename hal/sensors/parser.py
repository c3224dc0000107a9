"""What every sensor parser promises: bytes in, readings and counted errors out.

A parser is fed whatever the serial port delivered, in chunks of any size and
cut anywhere, and never raises on bad input: a wire that glitches must cost a
count, not the reader. The same parsers run in the daemon and in the
technicians' decoder, so both report the same error kinds.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

R = TypeVar("R")


class ErrorKind(enum.StrEnum):
    """Why bytes from a sensor were not a reading; the keys of every error count."""

    CHECKSUM = "checksum"
    """A frame or sentence whose checksum does not match, or that has none."""
    TRUNCATED = "truncated"
    """A frame or sentence cut short: the next one began, or the stream ended or vanished mid-frame."""
    NOISE = "noise"
    """Bytes outside any frame; one count per run of them, not per byte."""
    NON_UTF8 = "non_utf8"
    """A sentence or line that is not valid UTF-8."""
    MALFORMED = "malformed"
    """Framed correctly but unusable: a wrong length field, unparsable, out-of-range or impossible fields."""
    DISCONNECTED = "disconnected"
    """An open port failed: the device was unplugged or stopped answering reads."""
    OPEN_FAILED = "open_failed"
    """An attempt to open the port failed (the device is absent or busy)."""
    SILENT = "silent"
    """The port stayed open but sent nothing for the sensor's silence timeout; it is reopened."""
    INTERNAL = "internal"
    """A parser raised: a bug, caught so that the reader keeps going."""


@dataclass(slots=True)
class Parsed(Generic[R]):
    """What one ``feed`` or ``flush`` produced."""

    readings: list[R] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def error(self, kind: ErrorKind) -> None:
        self.errors[kind.value] += 1


class Parser(Protocol[R]):
    """An incremental decoder of one sensor's byte stream."""

    def feed(self, data: bytes) -> Parsed[R]:
        """Consume ``data``; return the readings completed by it and the errors found."""
        ...

    def flush(self) -> Parsed[R]:
        """The stream ended (end of file, device gone): count a pending partial frame and forget it."""
        ...


class StreamState:
    """What a framing parser remembers between chunks, shared by the PMS5003 and NMEA parsers.

    ``_fresh`` is true until the first frame boundary of a stream: bytes before it
    are the tail of something cut when the port opened, not noise. ``_in_noise``
    makes a run of junk count once.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._restart()

    def _restart(self) -> None:
        self._buf.clear()
        self._fresh = True
        self._fresh_skipped = 0
        self._in_noise = False
