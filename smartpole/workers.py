"""``smartpole receiver --workers N``: N receiver processes on one port, and their supervisor.

Each worker is an ordinary receiver process that binds the port with ``SO_REUSEPORT``, so the
kernel spreads connections between them; they share nothing but the database (and the broker),
as replicas on different hosts do. This parent only starts them, starts again one that dies, and
passes SIGTERM/SIGINT on: it exits 0 once every worker has drained and exited 0.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("receiver.workers")

RESTART_MIN_S = 0.5  # a worker that keeps dying is started again at most this often, doubling...
RESTART_MAX_S = 30.0  # ...up to this
STABLE_S = 60.0  # a worker that lived this long starts the doubling afresh
KILL_MARGIN_S = 5.0  # past the workers' own shutdown bound, they are killed


class Supervisor:
    """Keeps ``workers`` processes of ``command(k)`` (k = 0..workers-1) running until a signal."""

    def __init__(self, command: Callable[[int], list[str]], workers: int, shutdown_timeout_s: float) -> None:
        self.command = command
        self.workers = workers
        self.shutdown_timeout_s = shutdown_timeout_s
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        keepers = [asyncio.create_task(self._keep(k), name=f"worker-{k}") for k in range(self.workers)]
        await self._stopping.wait()
        log.info("workers_stopping", workers=len(self._procs))
        for proc in list(self._procs.values()):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        done, late = await asyncio.wait(keepers, timeout=self.shutdown_timeout_s + KILL_MARGIN_S)
        for k, proc in self._procs.items():
            if proc.returncode is None:
                log.error("worker_killed", worker=k, pid=proc.pid, after_s=self.shutdown_timeout_s + KILL_MARGIN_S)
                proc.kill()
        await asyncio.gather(*late, return_exceptions=True)
        codes = {k: proc.returncode for k, proc in self._procs.items()}
        log.info("workers_stopped", exit_codes=codes)
        # A worker still starting when SIGTERM came has no handler for it yet and ends by the signal:
        # it had taken nothing, so that too is a clean stop.
        return 0 if all(code in (0, -signal.SIGTERM) for code in codes.values()) else 1

    async def _keep(self, k: int) -> None:
        """Run worker ``k``, again whenever it dies on its own, until the supervisor stops."""
        delay = RESTART_MIN_S
        while True:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(*self.command(k))
            self._procs[k] = proc
            log.info("worker_started", worker=k, pid=proc.pid)
            code = await proc.wait()
            if self._stopping.is_set():
                return
            delay = RESTART_MIN_S if time.monotonic() - started > STABLE_S else min(delay * 2, RESTART_MAX_S)
            log.error("worker_died", worker=k, pid=proc.pid, exit_code=code, restart_in_s=delay)
            try:
                async with asyncio.timeout(delay):  # not wait_for: see sync/cancellation.py
                    await self._stopping.wait()
                return
            except TimeoutError:
                pass
