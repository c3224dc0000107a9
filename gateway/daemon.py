"""The pole daemon: opens the outbox and runs until SIGTERM, then commits what is in flight."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import structlog
import uvloop

from gateway.config import PoleConfig
from gateway.logs import configure_logging
from sync.outbox import Outbox

log = structlog.get_logger("daemon")


async def serve(config: PoleConfig, stop: asyncio.Event) -> None:
    outbox = await Outbox.open(config.outbox_path(), config.outbox)
    log.info("outbox_open", path=str(outbox.path), backlog=outbox.backlog, durability=config.outbox.durability)
    try:
        await stop.wait()
    finally:
        await outbox.close()
        log.info("stopped", backlog=outbox.backlog)


async def _main(config: PoleConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(config, stop)


def run_daemon(config: PoleConfig, config_path: Path) -> int:
    configure_logging(config.logging.level, config.logging.format, pole_id=config.pole.id)
    log.info("starting", config=str(config_path))
    uvloop.run(_main(config))
    return 0
