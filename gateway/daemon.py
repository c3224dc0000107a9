"""The pole daemon: wires the outbox, the uplink and the local server, and supervises them.

Shutdown (SIGTERM or SIGINT): the local server stops taking requests and waits
for those in flight, the components are cancelled, then the outbox commits
every event already handed to it and closes.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import structlog
import uvloop

from gateway.config import PoleConfig
from gateway.configfile import config_version
from gateway.http_server import LocalServer
from gateway.ingest import make_ingest_handler
from gateway.logs import configure_logging
from gateway.supervisor import FatalError, Supervisor
from gateway.version import SOFTWARE_VERSION
from sync.events import Location
from sync.outbox import Outbox
from sync.uplink import SimulatedUplink, Uplink
from sync.uplink_http import HttpUplink

log = structlog.get_logger("daemon")


class Daemon:
    """One pole's running state; ``run`` until ``stop`` is set."""

    def __init__(self, config: PoleConfig, config_version: str = "unknown") -> None:
        self.config = config
        self.config_version = config_version
        self.started = time.time()
        self.supervisor = Supervisor()
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None
        self.server = LocalServer(config.http)
        self.ready = asyncio.Event()

    def location(self) -> Location | None:
        fallback = self.config.pole.location
        return fallback.as_location() if fallback else None

    async def status_block(self) -> dict[str, Any]:
        """The status the pole reports upstream with every batch."""
        assert self.outbox is not None
        stats = await self.outbox.stats()
        return {
            "backlog": stats.depth,
            "oldest_age_s": stats.oldest_age_s,
            "outbox_bytes": stats.bytes_used,
            "disk_free_bytes": shutil.disk_usage(self.outbox.path.parent).free,
            "dead_letters": stats.dead_letters,
            "software_version": SOFTWARE_VERSION,
            "config_version": self.config_version,
            "uptime_s": round(time.time() - self.started, 1),
        }

    def _build_uplink(self, outbox: Outbox) -> Uplink:
        cfg = self.config.uplink
        if cfg.kind == "simulated":
            return SimulatedUplink(outbox, cfg)
        if cfg.token is None:
            log.warning("uplink_without_token", hint="set SMARTPOLE_UPLINK_TOKEN; the receiver will answer 401")
        return HttpUplink(outbox, cfg, self.config.pole.id, self.status_block)

    async def run(self, stop: asyncio.Event) -> None:
        outbox = await Outbox.open(self.config.outbox_path(), self.config.outbox)
        self.outbox = outbox
        log.info("outbox_open", path=str(outbox.path), backlog=outbox.backlog, durability=self.config.outbox.durability)
        try:
            self.uplink = self._build_uplink(outbox)
            self.server.app.router.add_post(
                "/v1/events",
                make_ingest_handler(outbox, self.location, self.config.http.max_events_per_request),
            )
            await self.server.start()
            self.ready.set()
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self.supervisor.supervise("uplink", self.uplink.run), name="uplink")]
                await stop.wait()
                log.info("stopping")
                await self.server.stop()
                for task in tasks:
                    task.cancel()
        finally:
            await self.server.stop()
            await outbox.close()
            log.info("stopped", backlog=outbox.backlog)


async def _main(daemon: Daemon) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    fatal: list[BaseException] = []
    try:
        await daemon.run(stop)
    except* FatalError as group:
        fatal.extend(group.exceptions)
    for exc in fatal:
        log.error("fatal", error=str(exc))
    return 1 if fatal else 0


def run_daemon(config: PoleConfig, config_path: Path) -> int:
    configure_logging(config.logging.level, config.logging.format, pole_id=config.pole.id)
    log.info("starting", config=str(config_path), version=SOFTWARE_VERSION, python=sys.version.split()[0])
    return uvloop.run(_main(Daemon(config, config_version(config_path))))
