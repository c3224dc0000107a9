"""``smartpole demo``: a receiver (with its dashboard) and two pole daemons on this machine, wired together.

The first pole's camera is a recorded street video (looped, at its own frame
rate) and its three serial sensors are simulated devices on pseudo-terminals,
with a little line noise; the second pole has no camera and its own simulated
air-quality sensor and radar, its own outbox and token, so that the fleet shows
more than one pole. Everything else is the production code path. Files live
under the work directory: the receiver's SQLite database and media, the poles'
outboxes. Each run registers the poles again, makes the dashboard's demo admin
and prints a read token, so the events can be looked at with curl too.
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import structlog
import uvloop
from pydantic import SecretStr

from gateway.config import LocationConfig, PathsConfig, PoleConfig, PoleSection
from gateway.daemon import Daemon
from gateway.logs import configure_logging
from gateway.remote import reread
from gateway.tmpfs import use_memory_for_temp_files
from gateway.vision.config import LineConfig, VisionConfig
from gateway.web.login import hash_password
from gateway.web.server import HttpConfig
from hal.camera.base import CameraConfig
from hal.sensors.config import SensorKind
from hal.simulator import Faults, SimulatedSerialDevice
from receiver import service
from receiver.config import ReceiverConfig, ReceiverSection
from sync.uplink.base import UplinkConfig

log = structlog.get_logger("demo")

RECEIVER_PORT = 8480
POLE_PORT = 8470
SECOND_POLE_PORT = 8471
PASSWORD = "smartpole-demo"
ADMIN = "admin"  # the dashboard's demo user, with PASSWORD
INGEST_TOKEN = "demo-ingest-token-0123456789"
STREET_VIDEO = Path(__file__).resolve().parent / "media" / "street.avi"
SIMULATED_SENSORS: tuple[SensorKind, ...] = ("pms5003", "nmea", "radar")
SECOND_POLE_SENSORS: tuple[SensorKind, ...] = ("pms5003", "radar")


@dataclass(frozen=True)
class DemoPole:
    """One of the demo's poles as the receiver registers it."""

    pole_id: str
    name: str
    lat: float
    lon: float
    tags: tuple[str, ...]
    http_port: int
    directory: str  # under the work directory: its outbox and state


POLES = (
    DemoPole("demo-pole", "Damrak crossing", 52.3731, 4.8922, ("centre", "camera"), POLE_PORT, "pole"),
    DemoPole("demo-pole-2", "IJ ferry quay", 52.3790, 4.9003, ("north",), SECOND_POLE_PORT, "pole-2"),
)


def demo_receiver_config(workdir: Path) -> ReceiverConfig:
    return ReceiverConfig(
        receiver=ReceiverSection(
            port=RECEIVER_PORT,
            database_url=SecretStr(f"sqlite:///{(workdir / 'receiver' / 'receiver.db').resolve()}"),
            media_dir=workdir / "receiver" / "media",
        )
    )


def demo_pole_config(
    workdir: Path, token: str, devices: list[SimulatedSerialDevice], pole: DemoPole = POLES[0], camera: bool = True
) -> PoleConfig:
    return PoleConfig(
        pole=PoleSection(id=pole.pole_id, location=LocationConfig(lat=pole.lat, lon=pole.lon)),
        paths=PathsConfig(state_dir=workdir / pole.directory / "state"),
        uplink=UplinkConfig(url=f"http://127.0.0.1:{RECEIVER_PORT}", token=SecretStr(token), bandwidth_bytes_per_s=0),
        http=HttpConfig(
            port=pole.http_port,
            password_hash=SecretStr(hash_password(PASSWORD)),
            ingest_token=SecretStr(INGEST_TOKEN),
        ),
        cameras=(
            [CameraConfig(name="street", source=str(STREET_VIDEO), kind="file", rate="native", at_end="loop")]
            if camera
            else []
        ),
        vision=VisionConfig(lines=[LineConfig(name="crossing", start=(0.0, 0.55), end=(1.0, 0.55))]),
        sensors=[d.config(name=d.kind if d.kind != "nmea" else "gps") for d in devices],
    )


def banner(reader_token: str, workdir: Path) -> str:
    """What a person sees first: where to look, with which password, and two curl lines."""
    receiver = f"http://127.0.0.1:{RECEIVER_PORT}"
    pole = f"http://127.0.0.1:{POLE_PORT}"
    return (
        f"\nSmartPole demo: a receiver and two poles on this machine (files under {workdir}; Ctrl-C stops it)\n\n"
        f"  dashboard    {receiver}/   user {ADMIN}, password {PASSWORD}\n"
        f"  status page  {pole}/   password {PASSWORD}"
        f"  (second pole: http://127.0.0.1:{SECOND_POLE_PORT}/)\n\n"
        f"  see events:  curl -H 'Authorization: Bearer {reader_token}' {receiver}/v1/events\n"
        f"  post event:  curl -H 'Authorization: Bearer {INGEST_TOKEN}' -H 'Content-Type: application/json' "
        f'-d \'{{"type":"hello"}}\' {pole}/v1/events\n\n'
        "log:\n"
    )


async def _demo(workdir: Path, duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)

    receiver_config = demo_receiver_config(workdir)
    tokens = {
        p.pole_id: await service.add_pole(receiver_config, p.pole_id, p.name, (p.lat, p.lon), list(p.tags))
        for p in POLES
    }
    reader_token = await service.add_reader(receiver_config, "demo")
    await service.add_user(receiver_config, ADMIN, "admin", PASSWORD)
    # Printed, not logged: logs scrub tokens and passwords, and these throwaway ones are meant to be seen.
    print(banner(reader_token, workdir), flush=True)
    log.info("demo_starting", workdir=str(workdir))
    receiver_up = asyncio.Event()
    receiver_stop = asyncio.Event()
    noisy = Faults(checksum=0.02, noise=0.02)
    with ExitStack() as devices:
        sims = [
            devices.enter_context(SimulatedSerialDevice(kind, faults=noisy, seed=n))
            for n, kind in enumerate(SIMULATED_SENSORS)
        ]
        second_sims = [
            devices.enter_context(SimulatedSerialDevice(kind, faults=noisy, seed=10 + n))
            for n, kind in enumerate(SECOND_POLE_SENSORS)
        ]
        first, second = POLES
        daemon = Daemon(demo_pole_config(workdir, tokens[first.pole_id], sims, first))
        daemon2 = Daemon(demo_pole_config(workdir, tokens[second.pole_id], second_sims, second, camera=False))
        async with asyncio.TaskGroup() as tg:
            receiving = tg.create_task(service.serve(receiver_config, receiver_stop, lambda _: receiver_up.set()))
            await receiver_up.wait()
            poles = [tg.create_task(_run_pole(daemon, stop)), tg.create_task(_run_pole(daemon2, stop, second.pole_id))]
            await daemon.ready.wait()
            log.info(
                "demo_ready",
                status_page=f"http://127.0.0.1:{POLE_PORT}/",
                dashboard=f"http://127.0.0.1:{RECEIVER_PORT}/",
            )
            await asyncio.gather(*poles)
            receiver_stop.set()
            await receiving


async def _run_pole(daemon: Daemon, stop: asyncio.Event, pole_id: str | None = None) -> None:
    """Run the pole; a reload (the status page's button, a remote configuration) restarts it in-process.
    ``pole_id`` goes on this task's log lines (the process's lines name the first pole)."""
    if pole_id is not None:
        structlog.contextvars.bind_contextvars(pole_id=pole_id)
    while True:
        await daemon.run(stop)
        if not daemon.reload_requested:
            return
        loaded = daemon.next_config or reread(daemon.loaded)
        stop.clear()
        daemon = Daemon(loaded)


def run_demo(workdir: Path, duration: float | None = None) -> int:
    configure_logging("info", "auto", pole_id="demo-pole")
    use_memory_for_temp_files()
    uvloop.run(_demo(workdir, duration))
    return 0
