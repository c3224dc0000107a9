"""Plantower PMS5003 particulate sensor, active mode.

Frame layout (datasheet, all fields big-endian 16-bit):

====== ==========================================================
bytes  field
====== ==========================================================
0-1    start characters 0x42 0x4D ("BM")
2-3    frame length after these four bytes: 2 x 13 data + 2 checksum = 28
4-9    PM1.0, PM2.5, PM10 in µg/m³, CF=1 (factory calibration particle)
10-15  PM1.0, PM2.5, PM10 in µg/m³, atmospheric environment
16-27  particles beyond 0.3, 0.5, 1.0, 2.5, 5.0 and 10 µm per 0.1 L of air
28-29  reserved
30-31  checksum: sum of bytes 0-29, low 16 bits
====== ==========================================================

No library fits here: the maintained PMS5003 packages open the port themselves
and drive the sensor's GPIO pins, while the daemon needs a parser it can feed
from an asyncio reader and the decoder from a file; the frame is one
``struct`` unpack and a sum.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, fields
from typing import Any

from hal.sensors.parser import ErrorKind, Parsed, StreamState

START = b"\x42\x4d"
FRAME_SIZE = 32
FRAME_LENGTH = 28
_BODY = struct.Struct(">2sH13H")  # start, length, 13 data words; then the checksum


@dataclass(frozen=True, slots=True)
class PmsReading:
    """One frame's atmospheric concentrations (µg/m³) and particle counts (per 0.1 L)."""

    pm1_0: int
    pm2_5: int
    pm10: int
    particles_0_3: int
    particles_0_5: int
    particles_1_0: int
    particles_2_5: int
    particles_5_0: int
    particles_10: int

    @property
    def plausible(self) -> bool:
        """Both series are cumulative: PM1.0 is part of PM2.5, which is part of PM10; a particle
        beyond 0.5 µm is also beyond 0.3 µm. A frame that says otherwise did not come from the sensor."""
        counts = (
            self.particles_0_3,
            self.particles_0_5,
            self.particles_1_0,
            self.particles_2_5,
            self.particles_5_0,
            self.particles_10,
        )
        return self.pm1_0 <= self.pm2_5 <= self.pm10 and all(a >= b for a, b in zip(counts, counts[1:], strict=False))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_COUNTS = tuple(f.name for f in fields(PmsReading))[3:]


def checksum(frame: bytes | bytearray) -> int:
    return sum(frame[: FRAME_SIZE - 2]) & 0xFFFF


def encode_frame(reading: PmsReading, cf1: tuple[int, int, int] | None = None) -> bytes:
    """The frame a sensor would send for ``reading`` (the simulator's output).

    ``cf1`` are the factory-calibration concentrations, which the daemon does not
    use; by default they repeat the atmospheric ones.
    """
    atmospheric = (reading.pm1_0, reading.pm2_5, reading.pm10)
    counts = tuple(getattr(reading, name) for name in _COUNTS)
    body = _BODY.pack(START, FRAME_LENGTH, *(cf1 or atmospheric), *atmospheric, *counts, 0)
    return body + checksum(body).to_bytes(2, "big")


def _decode(frame: bytes | bytearray) -> PmsReading:
    words = _BODY.unpack_from(frame)[2:]
    # Past the three CF=1 concentrations: atmospheric ones, then counts; the 13th word is reserved.
    return PmsReading(*words[3:12])


class Pms5003Parser(StreamState):
    """Finds PMS5003 frames in a byte stream and resynchronises after a bad one.

    Up to a frame's worth of bytes before the first start characters is not an
    error: a reader that opens the port mid-frame sees the tail of one. After
    that, bytes between frames are noise, counted once per run.
    """

    def feed(self, data: bytes) -> Parsed[PmsReading]:
        out: Parsed[PmsReading] = Parsed()
        buf = self._buf
        buf += data
        while True:
            start = buf.find(START)
            if start < 0:
                # A trailing 0x42 may be the first half of the next start characters.
                keep = 1 if buf.endswith(START[:1]) else 0
                self._discard(len(buf) - keep, out)
                return out
            self._discard(start, out)
            self._fresh = False
            if len(buf) < 4:
                return out
            if int.from_bytes(buf[2:4], "big") != FRAME_LENGTH:
                # Start characters inside noise or data, or a corrupted length: look further.
                self._bad(ErrorKind.MALFORMED, out)
                continue
            if len(buf) < FRAME_SIZE:
                return out
            if checksum(buf) != int.from_bytes(buf[FRAME_SIZE - 2 : FRAME_SIZE], "big"):
                # A frame cut short shows as the next frame starting inside this one.
                kind = ErrorKind.TRUNCATED if self._next_start(buf) > 0 else ErrorKind.CHECKSUM
                self._bad(kind, out)
                continue
            reading = _decode(buf)
            if not reading.plausible:
                # The 16-bit sum of 30 bytes only ranges over 0-7650, so noise passes it now and
                # then; values that cannot be are the second line of defence.
                self._bad(ErrorKind.MALFORMED, out)
                continue
            out.readings.append(reading)
            del buf[:FRAME_SIZE]
            self._in_noise = False

    def flush(self) -> Parsed[PmsReading]:
        out: Parsed[PmsReading] = Parsed()
        if self._buf.startswith(START) or (self._buf and not self._fresh):
            out.error(ErrorKind.TRUNCATED)
        self._restart()
        return out

    def _discard(self, n: int, out: Parsed[PmsReading]) -> None:
        if n <= 0:
            return
        del self._buf[:n]
        if self._fresh:
            self._fresh_skipped += n
            if self._fresh_skipped < FRAME_SIZE:
                return
            self._fresh = False
        if not self._in_noise:
            out.error(ErrorKind.NOISE)
            self._in_noise = True

    def _bad(self, kind: ErrorKind, out: Parsed[PmsReading]) -> None:
        """Count a bad frame and step past its start; what follows up to the next start is part of it."""
        out.error(kind)
        del self._buf[:1]
        self._in_noise = True

    @staticmethod
    def _next_start(buf: bytearray) -> int:
        """Offset of a plausible frame start inside the first frame's bytes, or -1."""
        at = buf.find(START, 1, FRAME_SIZE)
        while at > 0:
            length = buf[at + 2 : at + 4]
            if len(length) < 2 or int.from_bytes(length, "big") == FRAME_LENGTH:
                return at
            at = buf.find(START, at + 1, FRAME_SIZE)
        return -1
