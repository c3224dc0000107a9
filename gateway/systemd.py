"""Talking to systemd: the sd_notify protocol, and the watchdog that is fed only while we are alive.

``NOTIFY_SOCKET`` names a unix datagram socket (a leading ``@`` means the
abstract namespace); each message is a few ``KEY=VALUE`` lines. Outside systemd
the variable is unset and every call here does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

import structlog

log = structlog.get_logger("systemd")


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.address: str | None = None
        if address:
            self.address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> None:
        """Send e.g. ``send(READY=1, STATUS="...")``; errors are logged, never raised."""
        if self.address is None:
            return
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            log.warning("sd_notify_failed", error=str(exc))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of systemd's ``WATCHDOG_USEC`` in seconds, if the watchdog is on for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


async def feed_watchdog(
    notifier: Notifier, interval: float, alive: Callable[[float], list[str]], status: Callable[[], str]
) -> None:
    """Every ``interval`` s send WATCHDOG=1 if ``alive(interval)`` names nothing stuck.

    ``alive`` returns the names of components that made no progress within the
    interval; while it names any, the watchdog goes hungry and systemd restarts us.
    """
    starving = False
    while True:
        await asyncio.sleep(interval)
        stuck = alive(interval)
        if stuck:
            if not starving:
                log.error("watchdog_withheld", stuck=stuck)
            starving = True
            notifier.send(STATUS=f"stuck: {', '.join(stuck)}")
            continue
        if starving:
            log.warning("watchdog_resumed")
        starving = False
        notifier.send(WATCHDOG=1, STATUS=status())
