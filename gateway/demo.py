"""``smartpole demo``: the product on one machine with embedded defaults."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import structlog
import uvloop

from gateway.config import LocationConfig, PathsConfig, PoleConfig, PoleSection
from gateway.daemon import serve
from gateway.logs import configure_logging

log = structlog.get_logger("demo")


def demo_pole_config(workdir: Path) -> PoleConfig:
    return PoleConfig(
        pole=PoleSection(id="demo-pole", location=LocationConfig(lat=52.3731, lon=4.8922)),
        paths=PathsConfig(state_dir=workdir / "pole" / "state", cache_dir=workdir / "pole" / "cache"),
    )


async def _demo(workdir: Path, duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    await serve(demo_pole_config(workdir), stop)


def run_demo(workdir: Path, duration: float | None = None) -> int:
    configure_logging("info", "auto", pole_id="demo-pole")
    log.info("demo_starting", workdir=str(workdir))
    uvloop.run(_demo(workdir, duration))
    return 0
