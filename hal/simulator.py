"""Simulated serial sensors on pseudo-terminals, for development, tests and the demo.

A ``SimulatedSerialDevice`` opens a pty (``os.openpty``) and writes what the real
device would send to its master side from a background thread; the daemon reads
the slave side through the ordinary ``SerialSensor``, so everything from
pyserial up is the production path. The device is reached through a symlink
(``port_path``) that disappears while the device is unplugged and comes back
pointing at a fresh pty, as a USB adapter's ``/dev/serial/by-id`` link does.

Faults: ``checksum`` (the probability that a frame or sentence has a wrong
checksum; for the radar, that a report has a garbled number), ``truncate`` (that
a frame is cut short, the next one following at once), ``noise`` (that random
bytes follow a frame), ``vanish`` (how often per second, on average, the device
disappears mid-frame, for ``vanish_s`` seconds).

Run one by hand with ``python -m hal.simulator KIND [--faults checksum=0.1,noise=0.05]``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import tty
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from pynmeagps import GET, NMEAMessage

from hal.sensors.config import AnySensorConfig, NmeaConfig, Pms5003Config, RadarConfig, SensorKind
from hal.sensors.pms5003 import PmsReading, encode_frame
from hal.sensors.radar import TO_KMH, Unit

DEFAULT_LOCATION = (52.3731, 4.8922)
_HALF_FRAME_S = 0.05


@dataclass(frozen=True, slots=True)
class Faults:
    """How often the simulated device misbehaves: probabilities per frame, ``vanish`` a rate per second."""

    checksum: float = 0.0
    truncate: float = 0.0
    noise: float = 0.0
    vanish: float = 0.0
    vanish_s: float = 2.0

    def __post_init__(self) -> None:
        for name in ("checksum", "truncate", "noise"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault {name} must be a probability in [0, 1], got {value}")
        if self.vanish < 0 or self.vanish_s <= 0:
            raise ValueError("vanish must be a rate >= 0 per second and vanish_s positive")

    @classmethod
    def parse(cls, text: str) -> Faults:
        """``"checksum=0.1,noise=0.05,vanish=0.01"``; an empty string is no faults."""
        values: dict[str, float] = {}
        names = {f.name for f in fields(cls)}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, value = item.partition("=")
            if not sep or name.strip() not in names:
                raise ValueError(
                    f"unknown fault {item!r}; expected NAME=VALUE with NAME one of {', '.join(sorted(names))}"
                )
            values[name.strip()] = float(value)
        return cls(**values)


# (seconds to wait, bytes to send): one frame, sentence or report at a time.
Step = tuple[float, bytes]


def pms_stream(rng: random.Random, interval_s: float = 1.0) -> Iterator[Step]:
    """An urban PMS5003: PM2.5 wandering between clean and smoggy."""
    pm25 = rng.uniform(6, 20)
    while True:
        pm25 = min(150.0, max(1.0, pm25 + rng.gauss(0, 1.5)))
        pm1, pm10 = pm25 * 0.7, pm25 * 1.35
        counts = (pm25 * 110, pm25 * 32, pm25 * 7, pm25 * 0.9, pm25 * 0.25, pm25 * 0.08)
        reading = PmsReading(round(pm1), round(pm25), round(pm10), *(round(c) for c in counts))
        yield interval_s, encode_frame(reading)


def nmea_stream(
    rng: random.Random,
    interval_s: float = 1.0,
    location: tuple[float, float] = DEFAULT_LOCATION,
    clock_offset_s: float = 0.0,
    fix: bool = True,
    talker: str = "GN",
) -> Iterator[Step]:
    """A receiver sending GGA then RMC each second; its clock is ``clock_offset_s`` off ours."""
    while True:
        now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=clock_offset_s)
        if fix:
            # pynmeagps writes the hemispheres from the signs.
            lat = location[0] + rng.gauss(0, 0.00001)
            lon = location[1] + rng.gauss(0, 0.00001)
            gga = NMEAMessage(
                talker,
                "GGA",
                GET,
                time=now.time(),
                lat=lat,
                lon=lon,
                quality=1,
                numSV=rng.randint(7, 12),
                HDOP=0.9,
                alt=3.0,
                altUnit="M",
                sep=46.9,
                sepUnit="M",
            )
            rmc = NMEAMessage(
                talker,
                "RMC",
                GET,
                time=now.time(),
                date=now.date(),
                status="A",
                lat=lat,
                lon=lon,
                spd=0.0,
                cog=0.0,
                posMode="A",
            )
        else:
            gga = NMEAMessage(
                talker, "GGA", GET, payload=["", "", "", "", "", "0", "00", "99.99", "", "", "", "", "", ""]
            )
            rmc = NMEAMessage(
                talker,
                "RMC",
                GET,
                payload=[now.strftime("%H%M%S.00"), "V", "", "", "", "", "", "", now.strftime("%d%m%y"), "", "", "N"],
            )
        yield interval_s, gga.serialize()
        yield 0.01, rmc.serialize()


def radar_stream(
    rng: random.Random,
    unit: Unit = "mps",
    speed_kmh: tuple[float, float] = (25.0, 70.0),
    gap_s: tuple[float, float] = (2.0, 6.0),
    rate_hz: float = 10.0,
) -> Iterator[Step]:
    """Vehicles passing now and then: each a burst of reports around its speed, signed by direction."""
    while True:
        wait = rng.uniform(*gap_s)
        kmh = rng.uniform(*speed_kmh)
        sign = 1.0 if rng.random() < 0.6 else -1.0
        for i in range(rng.randint(8, 15)):
            value = sign * max(0.0, kmh + rng.gauss(0, 1.0)) / TO_KMH[unit]
            yield (wait if i == 0 else 1.0 / rate_hz), f"{value:.2f}\r\n".encode()


class SimulatedSerialDevice:
    """A fake sensor on a pty, reachable at ``port_path`` until ``stop()``.

    Use as a context manager, or ``start()`` / ``stop()``. ``unplug()`` and
    ``replug()`` do by hand what the ``vanish`` fault does at random.
    """

    def __init__(
        self,
        kind: SensorKind,
        *,
        faults: Faults | None = None,
        seed: int | None = None,
        link_path: Path | str | None = None,
        radar_unit: Unit = "mps",
        location: tuple[float, float] = DEFAULT_LOCATION,
        clock_offset_s: float = 0.0,
        gps_fix: bool = True,
        interval_s: float = 1.0,
        stream: Iterator[Step] | None = None,
    ) -> None:
        self.kind: SensorKind = kind
        self.faults = faults or Faults()
        self._rng = random.Random(seed)
        self._radar_unit = radar_unit
        self._own_dir: Path | None = None
        if link_path is None:
            self._own_dir = Path(tempfile.mkdtemp(prefix="smartpole-sim-"))
            link_path = self._own_dir / f"tty-{kind}"
        self._link = Path(link_path)
        self._stream = stream or self._default_stream(kind, interval_s, location, clock_offset_s, gps_fix)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self.sent: Counter[str] = Counter()
        """What was sent: ``frames``, ``bytes``, ``dropped_bytes`` (no reader kept up), and each fault injected."""

    def _default_stream(
        self, kind: SensorKind, interval_s: float, location: tuple[float, float], clock_offset_s: float, fix: bool
    ) -> Iterator[Step]:
        if kind == "pms5003":
            return pms_stream(self._rng, interval_s)
        if kind == "nmea":
            return nmea_stream(self._rng, interval_s, location, clock_offset_s, fix)
        return radar_stream(self._rng, self._radar_unit)

    @property
    def port_path(self) -> str:
        return str(self._link)

    @property
    def present(self) -> bool:
        return self._master is not None

    def config(self, name: str | None = None, **options: object) -> AnySensorConfig:
        """A sensor configuration that reads this device (options as in the pole file)."""
        base = {"name": name or f"sim-{self.kind}", "kind": self.kind, "port": self.port_path, **options}
        if self.kind == "pms5003":
            return Pms5003Config.model_validate(base)
        if self.kind == "nmea":
            return NmeaConfig.model_validate(base)
        return RadarConfig.model_validate({"unit": self._radar_unit, **base})

    def start(self) -> SimulatedSerialDevice:
        self.replug()
        self._thread = threading.Thread(target=self._run, name=f"sim-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.unplug()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def __enter__(self) -> SimulatedSerialDevice:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def unplug(self) -> None:
        """The device disappears: its path goes, and a reader's next read fails."""
        with self._lock:
            with contextlib.suppress(FileNotFoundError):
                self._link.unlink()
            for fd in (self._master, self._slave):
                if fd is not None:
                    os.close(fd)
            self._master = self._slave = None

    def replug(self) -> None:
        """The device (re)appears at ``port_path``, on a new pty as a re-enumerated USB device would."""
        with self._lock:
            if self._master is not None:
                return
            master, slave = os.openpty()
            # Raw from the start: the line discipline must not echo, translate CR or
            # buffer lines before a reader configures the port.
            tty.setraw(slave)
            os.set_blocking(master, False)
            self._link.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._link.with_name(self._link.name + ".new")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(os.ttyname(slave))
            tmp.replace(self._link)
            self._master, self._slave = master, slave

    def write(self, data: bytes) -> int:
        """Send raw bytes now, as the device; what a full buffer refuses is dropped, like a UART overrun."""
        with self._lock:
            if self._master is None:
                return 0
            try:
                n = os.write(self._master, data)
            except (BlockingIOError, OSError):
                n = 0
        self.sent["bytes"] += n
        self.sent["dropped_bytes"] += len(data) - n
        return n

    def _run(self) -> None:
        last = time.monotonic()
        for delay, frame in self._stream:
            if self._stop.wait(delay):
                return
            now = time.monotonic()
            if self.faults.vanish and self._rng.random() < 1 - math.exp(-self.faults.vanish * (now - last)):
                self._vanish(frame)
            last = now
            self._send(frame)

    def _vanish(self, frame: bytes) -> None:
        self.write(frame[: len(frame) // 2])
        self.sent["vanish"] += 1
        # Half a frame on the wire before the plug is pulled: closing the pty at once would
        # discard what the reader had not read yet, and the half frame would never show.
        if self._stop.wait(_HALF_FRAME_S):
            return
        self.unplug()
        if self._stop.wait(self.faults.vanish_s):
            return
        self.replug()

    def _send(self, frame: bytes) -> None:
        faults, rng = self.faults, self._rng
        if faults.checksum and rng.random() < faults.checksum:
            frame = self._corrupt(frame)
            self.sent["checksum"] += 1
        if faults.truncate and rng.random() < faults.truncate:
            frame = frame[: rng.randrange(1, max(2, len(frame) - 2))]
            self.sent["truncate"] += 1
        self.write(frame)
        self.sent["frames"] += 1
        if faults.noise and rng.random() < faults.noise:
            junk = rng.randbytes(rng.randint(1, 24))
            # A line protocol resumes at the next line end; end the junk with one so one report, not two, is lost.
            self.write(junk if self.kind == "pms5003" else junk + b"\r\n")
            self.sent["noise"] += 1

    def _corrupt(self, frame: bytes) -> bytes:
        data = bytearray(frame)
        if self.kind == "pms5003":
            data[4 + self._rng.randrange(26)] ^= 0x01 << self._rng.randrange(8)
        elif self.kind == "nmea":
            star = data.rfind(b"*")
            data[star + 1 : star + 3] = b"%02X" % ((int(data[star + 1 : star + 3], 16) + 1) & 0xFF)
        else:
            data[0:0] = b"x"
        return bytes(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hal.simulator", description="Run a simulated serial sensor on a pty."
    )
    parser.add_argument("kind", choices=["pms5003", "nmea", "radar"])
    parser.add_argument("--faults", default="", help="e.g. checksum=0.1,truncate=0.05,noise=0.05,vanish=0.01")
    parser.add_argument("--link", default=None, help="path of the symlink to the pty (default: in a temp dir)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--clock-offset", type=float, default=0.0, help="seconds the GPS clock is off (nmea)")
    args = parser.parse_args(argv)
    device = SimulatedSerialDevice(
        args.kind,
        faults=Faults.parse(args.faults),
        seed=args.seed,
        link_path=args.link,
        clock_offset_s=args.clock_offset,
    )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with device:
        print(device.port_path, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
