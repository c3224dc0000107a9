"""Serial bytes built by hand from the datasheets, independent of the code under test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# The two sentences every NMEA tutorial quotes, checksums included as published.
GGA_CLASSIC = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"
RMC_CLASSIC = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n"


def pms_frame(
    pm1_0: int = 0,
    pm2_5: int = 8,
    pm10: int = 400,
    particles: tuple[int, int, int, int, int, int] = (900, 260, 55, 7, 2, 1),
    cf1: tuple[int, int, int] = (6, 9, 12),
    checksum: int | None = None,
    length: int = 28,
) -> bytes:
    """A PMS5003 frame per the datasheet: BM, length, 13 big-endian words, then the 16-bit sum."""
    frame = bytearray([0x42, 0x4D, length >> 8, length & 0xFF])
    for word in (*cf1, pm1_0, pm2_5, pm10, *particles, 0):  # the 13th word is reserved
        frame.append(word >> 8)
        frame.append(word & 0xFF)
    total = 0
    for byte in frame:
        total += byte
    total = (total & 0xFFFF) if checksum is None else checksum
    frame.append(total >> 8)
    frame.append(total & 0xFF)
    assert len(frame) == 32
    return bytes(frame)


def nmea(body: str, *, checksum: str | None = None, end: str = "\r\n") -> bytes:
    """``$body*hh`` with the XOR of the body's characters, as NMEA 0183 defines it."""
    xor = 0
    for char in body:
        xor ^= ord(char)
    return f"${body}*{checksum if checksum is not None else format(xor, '02X')}{end}".encode("ascii")


def gga(
    time_: str = "092750.00",
    lat: str = "5222.3860",
    ns: str = "N",
    lon: str = "00453.5320",
    ew: str = "E",
    quality: int = 1,
    satellites: str = "09",
    talker: str = "GN",
) -> bytes:
    return nmea(f"{talker}GGA,{time_},{lat},{ns},{lon},{ew},{quality},{satellites},0.9,3.2,M,46.9,M,,")


def rmc(
    time_: str = "092750.00",
    status: str = "A",
    lat: str = "5222.3860",
    ns: str = "N",
    lon: str = "00453.5320",
    ew: str = "E",
    knots: str = "0.02",
    date: str = "010524",
    mode: str = "A",
    talker: str = "GN",
) -> bytes:
    return nmea(f"{talker}RMC,{time_},{status},{lat},{ns},{lon},{ew},{knots},31.7,{date},,,{mode}")


def nmea_time(epoch: float) -> tuple[str, str]:
    """(hhmmss.ss, ddmmyy) of an epoch time in UTC, as RMC writes them."""
    t = time.gmtime(epoch)
    hundredths = int((epoch % 1) * 100)
    return (
        f"{t.tm_hour:02d}{t.tm_min:02d}{t.tm_sec:02d}.{hundredths:02d}",
        f"{t.tm_mday:02d}{t.tm_mon:02d}{t.tm_year % 100:02d}",
    )


def radar_line(speed: float | str, unit: str | None = None) -> bytes:
    """One OPS243 report: the speed, with the units label first when units reporting is on."""
    value = speed if isinstance(speed, str) else f"{speed:.2f}"
    return (f'"{unit}",{value}' if unit else value).encode() + b"\r\n"


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll until ``predicate()`` holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
