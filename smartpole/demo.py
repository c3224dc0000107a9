"""``smartpole demo``: a receiver and a pole daemon on this machine, wired together.

The pole's camera is a recorded street video (looped, at its own frame rate) and
its three serial sensors are simulated devices on pseudo-terminals, with a
little line noise; everything else is the production code path. Files live
under the work directory: the receiver's SQLite database and media, the pole's
outbox. Each run registers the demo pole with the receiver again and prints a
read token, so the events can be looked at with curl.
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import ExitStack
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
PASSWORD = "smartpole-demo"
INGEST_TOKEN = "demo-ingest-token-0123456789"
STREET_VIDEO = Path(__file__).resolve().parent / "media" / "street.avi"
SIMULATED_SENSORS: tuple[SensorKind, ...] = ("pms5003", "nmea", "radar")


def demo_receiver_config(workdir: Path) -> ReceiverConfig:
    return ReceiverConfig(
        receiver=ReceiverSection(
            port=RECEIVER_PORT,
            database_url=SecretStr(f"sqlite:///{(workdir / 'receiver' / 'receiver.db').resolve()}"),
            media_dir=workdir / "receiver" / "media",
        )
    )


def demo_pole_config(workdir: Path, token: str, devices: list[SimulatedSerialDevice]) -> PoleConfig:
    return PoleConfig(
        pole=PoleSection(id="demo-pole", location=LocationConfig(lat=52.3731, lon=4.8922)),
        paths=PathsConfig(state_dir=workdir / "pole" / "state"),
        uplink=UplinkConfig(url=f"http://127.0.0.1:{RECEIVER_PORT}", token=SecretStr(token), bandwidth_bytes_per_s=0),
        http=HttpConfig(
            port=POLE_PORT, password_hash=SecretStr(hash_password(PASSWORD)), ingest_token=SecretStr(INGEST_TOKEN)
        ),
        cameras=[CameraConfig(name="street", source=str(STREET_VIDEO), kind="file", rate="native", at_end="loop")],
        vision=VisionConfig(lines=[LineConfig(name="crossing", start=(0.0, 0.55), end=(1.0, 0.55))]),
        sensors=[d.config(name=d.kind if d.kind != "nmea" else "gps") for d in devices],
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
    noisy = Faults(checksum=0.02, noise=0.02)
    with ExitStack() as devices:
        sims = [
            devices.enter_context(SimulatedSerialDevice(kind, faults=noisy, seed=n))
            for n, kind in enumerate(SIMULATED_SENSORS)
        ]
        daemon = Daemon(demo_pole_config(workdir, pole_token, sims))
        async with asyncio.TaskGroup() as tg:
            receiving = tg.create_task(service.serve(receiver_config, receiver_stop, lambda _: receiver_up.set()))
            await receiver_up.wait()
            pole = tg.create_task(_run_pole(daemon, stop))
            await daemon.ready.wait()
            log.info(
                "demo_ready", status_page=f"http://127.0.0.1:{POLE_PORT}/", receiver=f"http://127.0.0.1:{RECEIVER_PORT}"
            )
            # Printed, not logged: logs scrub tokens and passwords, and these throwaway ones are meant to be seen.
            print(
                f"\nstatus page: http://127.0.0.1:{POLE_PORT}/ (password: {PASSWORD})\n"
                f"see events:  curl -H 'Authorization: Bearer {reader_token}' "
                f"http://127.0.0.1:{RECEIVER_PORT}/v1/events\n"
                f"post event:  curl -H 'Authorization: Bearer {INGEST_TOKEN}' -d '{{\"type\":\"hello\"}}' "
                f"-H 'Content-Type: application/json' http://127.0.0.1:{POLE_PORT}/v1/events\n",
                flush=True,
            )
            await pole
            receiver_stop.set()
            await receiving


async def _run_pole(daemon: Daemon, stop: asyncio.Event) -> None:
    """Run the pole; a reload (the status page's button, a remote configuration) restarts it in-process."""
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
    log.info("demo_starting", workdir=str(workdir))
    uvloop.run(_demo(workdir, duration))
    return 0
