"""``smartpole demo``: a receiver and a pole daemon on this machine, wired together.

Everything lives under the work directory: the receiver's SQLite database and
media, the pole's outbox. Each run registers the demo pole with the receiver
again and prints a read token, so the events can be looked at with curl.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import structlog
import uvloop
from pydantic import SecretStr

from gateway.config import LocationConfig, PathsConfig, PoleConfig, PoleSection
from gateway.daemon import Daemon
from gateway.http_server import HttpConfig
from gateway.logs import configure_logging
from receiver import service
from receiver.config import ReceiverConfig, ReceiverSection
from sync.uplink import UplinkConfig

log = structlog.get_logger("demo")

RECEIVER_PORT = 8480
POLE_PORT = 8470


def demo_receiver_config(workdir: Path) -> ReceiverConfig:
    return ReceiverConfig(
        receiver=ReceiverSection(
            port=RECEIVER_PORT,
            database_url=SecretStr(f"sqlite:///{(workdir / 'receiver' / 'receiver.db').resolve()}"),
            media_dir=workdir / "receiver" / "media",
        )
    )


def demo_pole_config(workdir: Path, token: str) -> PoleConfig:
    return PoleConfig(
        pole=PoleSection(id="demo-pole", location=LocationConfig(lat=52.3731, lon=4.8922)),
        paths=PathsConfig(state_dir=workdir / "pole" / "state", cache_dir=workdir / "pole" / "cache"),
        uplink=UplinkConfig(url=f"http://127.0.0.1:{RECEIVER_PORT}", token=SecretStr(token), bandwidth_bytes_per_s=0),
        http=HttpConfig(port=POLE_PORT),
    )


async def _demo(workdir: Path, duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)

    receiver_config = demo_receiver_config(workdir)
    pole_token = await service.add_pole(receiver_config, "demo-pole")
    reader_token = await service.add_reader(receiver_config, "demo")
    receiver_up = asyncio.Event()
    receiver_stop = asyncio.Event()
    daemon = Daemon(demo_pole_config(workdir, pole_token), config_version="demo")
    async with asyncio.TaskGroup() as tg:
        receiving = tg.create_task(service.serve(receiver_config, receiver_stop, lambda _: receiver_up.set()))
        await receiver_up.wait()
        pole = tg.create_task(daemon.run(stop))
        await daemon.ready.wait()
        log.info(
            "demo_ready",
            pole_api=f"http://127.0.0.1:{POLE_PORT}/v1/events",
            receiver=f"http://127.0.0.1:{RECEIVER_PORT}",
            see_events=f"curl -H 'Authorization: Bearer {reader_token}' http://127.0.0.1:{RECEIVER_PORT}/v1/events",
        )
        await pole
        receiver_stop.set()
        await receiving


def run_demo(workdir: Path, duration: float | None = None) -> int:
    configure_logging("info", "auto", pole_id="demo-pole")
    log.info("demo_starting", workdir=str(workdir))
    uvloop.run(_demo(workdir, duration))
    return 0
