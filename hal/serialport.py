"""Reading a serial sensor on asyncio, surviving unplugs, glitches and garbage.

The port is driven by pyserial-asyncio-fast (pyserial's asyncio transport,
maintained by the Home Assistant project): reads are non-blocking on the event
loop, and opening and closing the device run in the default executor, so no
pyserial call blocks the loop. When the device vanishes (a read fails or the
stream ends) or goes silent, the port is closed and reopened with exponential
backoff and jitter (tenacity), so several sensors that vanish together do not
retry in lockstep. A session that delivered bytes resets the backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import serial
import serial_asyncio_fast
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential, wait_random

from hal.log_throttle import LogThrottle
from hal.sensors.config import AnySensorConfig, RadarConfig, SensorKind
from hal.sensors.parser import ErrorKind, Parsed, Parser
from hal.sensors.sensor import ReadingHandler, SensorReading, SensorState, SensorStats, new_parser

log = structlog.get_logger(__name__)

READ_SIZE = 4096
_CLOSE_TIMEOUT_S = 5.0
_OPEN_ERRORS = (serial.SerialException, OSError, ValueError)


def _close_if_opened(opening: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result()[1].transport.abort()


class _Unhealthy(Exception):
    """A session that ended without the device sending anything: back off before the next."""


class SerialSensor:
    """One sensor on one serial port: opens it, decodes what arrives, reconnects forever.

    ``run(on_reading)`` is the task; cancel it to stop (the port is closed on the
    way out). ``stats()`` is a snapshot for the status page and metrics.
    """

    def __init__(
        self,
        config: AnySensorConfig,
        *,
        clock: Callable[[], float] = time.time,
        log_interval_s: float = 60.0,
    ) -> None:
        self._config = config
        self._clock = clock
        self._throttle = LogThrottle(log_interval_s)
        self._log = log.bind(sensor=config.name, kind=config.kind, port=config.port)
        self._state: SensorState = "idle"
        self._readings_total = 0
        self._errors: Counter[str] = Counter()
        self._last_reading: SensorReading | None = None
        self._last_progress: float | None = None
        self._connected_since: float | None = None
        self._connects = 0
        self._last_error: str | None = None

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def kind(self) -> SensorKind:
        return self._config.kind

    def stats(self) -> SensorStats:
        last = self._last_reading
        return SensorStats(
            name=self.name,
            kind=self.kind,
            port=self._config.port,
            state=self._state,
            connected=self._state == "connected",
            readings_total=self._readings_total,
            errors=dict(self._errors),
            last_reading=last.value.as_dict() if last else None,
            last_reading_at=last.ts if last else None,
            last_progress=self._last_progress,
            connected_since=self._connected_since,
            connects=self._connects,
            last_error=self._last_error,
        )

    async def run(self, on_reading: ReadingHandler) -> None:
        cfg = self._config
        wait = wait_exponential(multiplier=cfg.reconnect_min_s, max=cfg.reconnect_max_s) + wait_random(
            0, cfg.reconnect_min_s
        )
        try:
            while True:
                retrying = AsyncRetrying(
                    retry=retry_if_exception_type(_Unhealthy), wait=wait, before_sleep=self._waiting
                )
                async for attempt in retrying:
                    with attempt:
                        await self._session(on_reading)
        finally:
            self._state = "stopped"
            self._connected_since = None

    def _waiting(self, retry: RetryCallState) -> None:
        self._state = "waiting"
        delay = retry.next_action.sleep if retry.next_action else 0.0
        held = self._throttle.allow("waiting")
        if held is not None:
            self._log.warning(
                "sensor unavailable",
                retry_in_s=round(delay, 2),
                attempts=retry.attempt_number,
                error=self._last_error,
                held_back=held,
            )

    async def _session(self, on_reading: ReadingHandler) -> None:
        """Open the port and read until it fails; raise ``_Unhealthy`` if nothing at all arrived."""
        cfg = self._config
        self._state = "connecting"
        opening = asyncio.ensure_future(
            serial_asyncio_fast.open_serial_connection(url=cfg.port, baudrate=cfg.baudrate, exclusive=True)
        )
        try:
            # Shielded: the open runs in a thread that a cancellation cannot stop, and a port it
            # opens after we stopped waiting must still be closed, or its exclusive lock stays held.
            reader, writer = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_if_opened)
            raise
        except _OPEN_ERRORS as exc:
            self._error(ErrorKind.OPEN_FAILED, str(exc))
            raise _Unhealthy() from exc

        parser = self._new_parser()
        got_bytes = False
        self._state = "connected"
        self._connected_since = self._clock()
        self._connects += 1
        self._log.info("sensor connected", connects=self._connects)
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation
                    # that lands as the read completes, and the reader would never stop.
                    async with asyncio.timeout(cfg.silence_timeout_s):
                        data = await reader.read(READ_SIZE)
                except TimeoutError:
                    self._error(ErrorKind.SILENT, f"nothing received for {cfg.silence_timeout_s} s")
                    break
                if not data:
                    self._error(ErrorKind.DISCONNECTED, "end of stream")
                    break
                got_bytes = True
                self._last_progress = self._clock()
                parser = self._feed(parser, data, on_reading)
        except _OPEN_ERRORS as exc:
            self._error(ErrorKind.DISCONNECTED, str(exc))
        finally:
            # A frame cut by the device vanishing counts as truncated.
            self._deliver(self._safe(parser.flush), on_reading)
            self._state = "waiting"
            self._connected_since = None
            await self._close(writer)
        if not got_bytes:
            raise _Unhealthy()

    def _new_parser(self) -> Parser[Any]:
        cfg = self._config
        return new_parser(cfg.kind, radar_unit=cfg.unit if isinstance(cfg, RadarConfig) else "mps", live=True)

    def _feed(self, parser: Parser[Any], data: bytes, on_reading: ReadingHandler) -> Parser[Any]:
        parsed = self._safe(lambda: parser.feed(data))
        self._deliver(parsed, on_reading)
        # A parser that raised may be in any state; start afresh on the next byte.
        return parser if parsed is not None else self._new_parser()

    def _safe(self, call: Callable[[], Parsed[Any]]) -> Parsed[Any] | None:
        try:
            return call()
        except Exception:
            self._errors[ErrorKind.INTERNAL.value] += 1
            if self._throttle.allow("internal") is not None:
                self._log.exception("sensor parser failed")
            return None

    def _deliver(self, parsed: Parsed[Any] | None, on_reading: ReadingHandler) -> None:
        if parsed is None:
            return
        for kind, n in parsed.errors.items():
            self._error(ErrorKind(kind), "bad bytes from the device", n)
        if not parsed.readings:
            return
        ts = self._clock()
        for value in parsed.readings:
            reading = SensorReading(self.name, self.kind, ts, value)
            self._readings_total += 1
            self._last_reading = reading
            try:
                on_reading(reading)
            except Exception:
                if self._throttle.allow("handler") is not None:
                    self._log.exception("reading handler failed")

    def _error(self, kind: ErrorKind, detail: str, n: int = 1) -> None:
        self._errors[kind.value] += n
        self._last_error = f"{kind.value}: {detail}"
        if kind is ErrorKind.OPEN_FAILED:
            return  # "sensor unavailable" says it, with the wait before the next attempt
        held = self._throttle.allow(kind.value)
        if held is not None:
            self._log.warning(
                "sensor error", error=kind.value, detail=detail, total=self._errors[kind.value], held_back=held
            )

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        # The transport closes itself after a failed read; closing it twice crashes a background task.
        if not transport.is_closing():
            transport.abort()  # nothing is ever written, so there is nothing to drain
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await writer.wait_closed()
