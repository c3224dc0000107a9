"""The pole daemon: wires the outbox, the uplink, the cameras' vision pipelines, the serial
sensors and the local web server, and keeps them running.

Every component runs under one supervisor in one TaskGroup; a crashed component
is logged and restarted with backoff. Nothing the pole might lack (a camera, a
serial port, the receiver, a model file) stops the daemon: each is reported on
the status page and retried. systemd hears ``READY=1`` once the outbox is open,
the web server listens and every camera has been tried, and ``WATCHDOG=1`` only
while the pipelines, the capture threads and the outbox writer keep moving.

Stopping (SIGTERM or SIGINT): the web server stops taking requests, producers
stop and flush (the last air-quality minute, open radar passes, pipeline
events), the uplink is cancelled, and the outbox commits everything already
handed to it. SIGHUP or the status page's "reload config" restarts all of it
in-process with the re-read file; so does a new remote configuration the
receiver named (``gateway/remote.py``), with the file and that overlay.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import structlog
import uvloop
from aiohttp import web

from gateway.config import PoleConfig
from gateway.configfile import ConfigError, config_version
from gateway.logs import configure_logging
from gateway.recorder import RecordingSink
from gateway.remote import LoadedConfig, RemoteConfigFetcher, embedded, load_effective, reread
from gateway.sensing.service import SensorService
from gateway.status import (
    CameraStatus,
    ComponentStatus,
    DiskStatus,
    ModelStatus,
    PoleInfo,
    PoleStatus,
    RecentEventStatus,
    SensorStatus,
    UplinkStatus,
)
from gateway.supervisor import FatalError, Supervisor
from gateway.systemd import Notifier, feed_watchdog, watchdog_interval
from gateway.tmpfs import use_memory_for_temp_files
from gateway.version import SOFTWARE_VERSION
from gateway.vision.pipeline import VisionParts, VisionPipeline
from gateway.vision.setup import build_pipeline, load_parts, make_executor
from gateway.web.ingest import make_ingest_handler
from gateway.web.login import WebAuth
from gateway.web.metrics import PoleMetrics
from gateway.web.server import LocalServer
from gateway.web.status_page import StatusPage
from httpkit.throttle import LoginThrottle
from sync.events import Accepted, Location, NewEvent
from sync.outbox import Outbox
from sync.policy import PolicyEngine
from sync.uplink.base import Uplink
from sync.uplink.factory import build_uplink

log = structlog.get_logger("daemon")

STOP_GRACE_S = 8.0  # systemd allows TimeoutStopSec; we aim to be done well inside 10 s


class Daemon:
    """One pole's running state; ``await run(stop)`` until ``stop`` is set."""

    def __init__(
        self, config: PoleConfig | LoadedConfig, config_path: Path | None = None, notifier: Notifier | None = None
    ) -> None:
        """``config``: the effective configuration with its base and overlay; a bare :class:`PoleConfig`
        is taken as the base, with the overlay persisted in its state directory."""
        loaded = config if isinstance(config, LoadedConfig) else embedded(config, config_path)
        config = loaded.config
        self.loaded = loaded
        self.next_config: LoadedConfig | None = None  # what to restart with, when a new overlay asked for it
        self.remote = RemoteConfigFetcher(loaded, self._restart_with)
        self.config = config
        self.config_path = config_path or loaded.source
        self.config_version = config_version(self.config_path) if self.config_path else "embedded"
        self.pole_id = config.pole.id
        self.notifier = notifier or Notifier()
        self.started = time.time()
        self.metrics = PoleMetrics()
        self.supervisor = Supervisor()
        http = config.http
        self.auth = WebAuth(
            http.password_hash.get_secret_value() if http.password_hash else None,
            http.ingest_token.get_secret_value() if http.ingest_token else None,
            http.session_hours,
            LoginThrottle(free_failures=http.login_free_failures, global_failures=http.login_failures_per_minute),
        )
        self.server = LocalServer(http, self.auth.middleware)
        self.outbox: Outbox | None = None
        self.sink: RecordingSink | None = None
        self.uplink: Uplink | None = None
        self.sensors: SensorService | None = None
        self.parts: VisionParts | None = None
        self.vision_error: str | None = None
        self.pipelines: list[VisionPipeline] = []
        self.ready = asyncio.Event()
        self.reload_requested = False
        self._stop: asyncio.Event | None = None

    # ------------------------------------------------------------------ wiring

    def location(self) -> Location | None:
        if self.sensors is not None:
            return self.sensors.location.current()
        fallback = self.config.pole.location
        return fallback.as_location() if fallback else None

    def _build_uplink(self, outbox: Outbox) -> Uplink:
        cfg = self.config.uplink
        if cfg.kind == "http" and cfg.token is None:
            log.warning("uplink_without_token", hint="set SMARTPOLE_UPLINK_TOKEN; the receiver will answer 401")
        if cfg.kind == "mqtt" and cfg.password is None and cfg.token is None:
            log.warning("uplink_without_password", hint="set SMARTPOLE_UPLINK_PASSWORD; the broker will refuse us")
        return build_uplink(outbox, cfg, self.pole_id, self.status_block, self.remote.heard)

    async def _build_vision(self, sink: RecordingSink, executor: ThreadPoolExecutor) -> None:
        vision = self.config.vision
        if not vision.enabled or not self.config.cameras:
            return
        try:
            self.parts = await asyncio.to_thread(load_parts, vision, self.metrics.on_inference)
        except Exception as exc:  # a missing model file: report it, keep the rest of the pole running
            self.vision_error = str(exc)
            log.error("vision_unavailable", error=str(exc))
            return
        on_plate = self.sensors.fusion.on_plate if self.sensors is not None else None
        self.pipelines = [
            build_pipeline(cam, vision, self.parts, self.config.privacy.plates, sink, executor, on_plate, self.location)
            for cam in self.config.cameras
        ]
        if vision.clips.enabled:
            # Clip triggers from other producers (speed violations come from the sensors).
            sink.watchers.append(self._clip_triggers)

    def _clip_triggers(self, event: NewEvent, accepted: Accepted) -> None:
        for pipeline in self.pipelines:
            pipeline.observe_event(event, accepted.id)

    def _register_routes(self, sink: RecordingSink) -> None:
        app = self.server.app
        http = self.config.http
        app.router.add_post(
            "/v1/events",
            make_ingest_handler(
                sink,
                self.location,
                http.max_events_per_request,
                http.max_future_s,
                http.max_past_s,
                http.max_body_bytes,
            ),
        )
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_page)
        StatusPage(self, self.auth).register(app)

    # ------------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self.notifier.send(STATUS="opening the outbox")
        outbox = await Outbox.open(self.config.outbox_path(), self.config.outbox)
        self.outbox = outbox
        if outbox.recovered_from is not None:
            log.error("outbox_recovered", moved_aside=str(outbox.recovered_from))
        log.info("outbox_open", path=str(outbox.path), backlog=outbox.backlog, durability=self.config.outbox.durability)
        policy = PolicyEngine(self.config.policy, self.config.policy_key(), "this pole")
        sink = RecordingSink(outbox, lambda type_: self.metrics.events.labels(type_).inc(), policy)
        self.sink = sink
        executor = make_executor(self.config.vision)
        producers_stop = asyncio.Event()
        try:
            if self.config.sensors:
                fallback = self.config.pole.location
                self.sensors = SensorService(
                    self.config.sensors,
                    sink,
                    fallback_location=fallback.as_location() if fallback else None,
                    traffic=self.config.traffic,
                    air_quality=self.config.air_quality,
                    gps=self.config.gps,
                )
            await self._build_vision(sink, executor)
            self.uplink = self._build_uplink(outbox)
            self._register_routes(sink)
            await self.server.start()

            async with asyncio.TaskGroup() as tg:
                supervised = [tg.create_task(self.supervisor.supervise("uplink", self.uplink.run), name="uplink")]
                supervised.append(
                    tg.create_task(self.supervisor.supervise("remote-config", self.remote.run), name="remote-config")
                )
                if self.sensors is not None:
                    for name, factory in self.sensors.components():
                        supervised.append(tg.create_task(self.supervisor.supervise(name, factory), name=name))
                producers = [
                    tg.create_task(
                        self.supervisor.supervise(f"camera:{p.name}", functools.partial(p.run, producers_stop)),
                        name=f"camera:{p.name}",
                    )
                    for p in self.pipelines
                ]
                await self._cameras_tried()
                self.ready.set()
                self.notifier.send(READY=1, STATUS=self.status_line())
                log.info(
                    "ready",
                    cameras=len(self.pipelines),
                    sensors=len(self.config.sensors),
                    port=self.server.port,
                    remote_config_version=self.loaded.version,
                    remote_config_error=self.loaded.error,
                )
                interval = watchdog_interval()
                if interval is not None:
                    supervised.append(
                        tg.create_task(feed_watchdog(self.notifier, interval, self.stuck, self.status_line))
                    )

                await stop.wait()
                self.notifier.send(STOPPING=1, STATUS="stopping")
                log.info("stopping", reload=self.reload_requested)
                await self.server.stop()
                producers_stop.set()
                await _wait_or_cancel(producers, STOP_GRACE_S)
                for task in supervised:
                    task.cancel()
        finally:
            await self.server.stop()
            if self.sensors is not None:
                await self.sensors.aclose()
            executor.shutdown(wait=False, cancel_futures=True)
            await outbox.close()
            self.auth.close()
            log.info("stopped", backlog=outbox.backlog)

    async def _cameras_tried(self, timeout: float = 15.0) -> None:
        """Until every camera has made its first attempt to open (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while any(p.camera.stats().state == "starting" for p in self.pipelines) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ liveness

    def stuck(self, within_s: float) -> list[str]:
        """Components that made no progress in ``within_s`` seconds; empty when all is well."""
        now = time.monotonic()
        out = []
        if self.outbox is not None and not self.outbox.writer_alive(within_s):
            out.append("outbox writer")
        for p in self.pipelines:
            if now - p.last_progress > within_s:
                out.append(f"pipeline {p.name}")
            blocked = p.camera.blocked_since()
            if blocked is not None and now - blocked > within_s:
                out.append(f"camera thread {p.name}")
        return out

    def status_line(self) -> str:
        backlog = self.outbox.backlog if self.outbox is not None else 0
        state = self.uplink.state.state if self.uplink is not None else "starting"
        cams = ", ".join(f"{p.name} {p.camera.stats().state}" for p in self.pipelines) or "no camera"
        return f"backlog {backlog}, uplink {state}, {cams}"

    # ------------------------------------------------------------------ status

    async def status_block(self) -> dict[str, Any]:
        """The status the pole reports upstream with every batch."""
        return (await self.status()).status_block()

    async def status(self) -> PoleStatus:
        """Everything the status page, ``/status.json``, the metrics and the uplink show, built here only."""
        assert self.outbox is not None and self.sink is not None
        now = time.time()
        ostats = await self.outbox.stats()
        disk = shutil.disk_usage(self.outbox.path.parent)
        cameras = []
        redactions: dict[str, int] = {}
        for p in self.pipelines:
            ps = p.stats()
            cam = ps.camera
            cameras.append(
                CameraStatus(
                    name=cam.name,
                    kind=cam.kind,
                    state=cam.state,
                    up=cam.up,
                    frames_read=cam.frames_read,
                    frames_dropped=cam.frames_dropped,
                    last_frame_age_s=cam.last_frame_age_s,
                    read_fps=cam.read_fps,
                    pipeline_fps=ps.fps,
                    reopens=cam.reopens,
                    last_error=cam.last_error or ps.snapshots.last_error,
                    conditions=list(ps.active_conditions),
                    stage_ms=ps.stage_ms,
                )
            )
            for kind, n in ps.snapshots.redactions.items():
                redactions[kind] = redactions.get(kind, 0) + n
        latest = self._latest_picture()
        models = []
        if self.parts is not None:
            for source in self.parts.timed:
                m = source.stats()
                models.append(ModelStatus(m.name, True, m.median_ms, m.inferences))
        if self.vision_error is not None:
            models.append(ModelStatus(self.vision_error, False, None, 0))
        sensors = self.sensors.status() if self.sensors is not None else None
        clock = sensors.clock if sensors is not None else None
        backlog = sum(ostats.depth.values())
        return PoleStatus(
            now=now,
            pole=PoleInfo(
                id=self.pole_id,
                software_version=SOFTWARE_VERSION,
                config_version=self.config_version,
                remote_config_version=self.remote.version,
                remote_config_target=self.remote.target,
                remote_config_error=self.remote.error,
                started_at=self.started,
                uptime_s=now - self.started,
                location=self.location(),
                clock=(
                    f"{clock.state}" + (f", {clock.skew_s:+.2f} s from GPS" if clock.skew_s is not None else "")
                    if clock is not None and clock.state != "unknown"
                    else None
                ),
            ),
            outbox=ostats,
            uplink=UplinkStatus.of(self.uplink.state, backlog) if self.uplink is not None else UplinkStatus.starting(),
            disk=DiskStatus(disk.free, disk.total, str(self.outbox.path.parent)),
            cameras=cameras,
            snapshot_seq=int(latest[0] * 1000) if latest else None,
            models=models,
            redactions=redactions,
            sensors=[
                SensorStatus(
                    s.name,
                    s.kind,
                    s.port,
                    s.state,
                    s.connected,
                    s.readings_total,
                    s.errors,
                    s.last_reading,
                    s.last_reading_at,
                )
                for s in (sensors.sensors if sensors is not None else [])
            ],
            clock=clock,
            dead_letters=await self.outbox.dead_letters(10),
            recent_events=[
                RecentEventStatus(e.id, e.seq, e.type, e.priority, e.ts, e.data, e.picture is not None)
                for e in self.sink.recent
            ],
            components=[
                ComponentStatus(c.name, c.running, c.restarts, c.last_error)
                for c in self.supervisor.components.values()
            ],
        )

    def _latest_picture(self) -> tuple[float, bytes] | None:
        """The newest redacted snapshot of any camera, with its time."""
        latest: tuple[float, bytes] | None = None
        for p in self.pipelines:
            snap = p.snapshots.stats()
            if snap.latest_jpeg is None or snap.latest_ts is None:
                continue
            if latest is None or snap.latest_ts > latest[0]:
                latest = (snap.latest_ts, snap.latest_jpeg)
        return latest

    def latest_snapshot(self) -> bytes | None:
        latest = self._latest_picture()
        return latest[1] if latest else None

    def thumbnail(self, event_id: str) -> bytes | None:
        return self.sink.picture(event_id) if self.sink is not None else None

    def clip(self, event_id: str) -> bytes | None:
        return self.sink.clip(event_id) if self.sink is not None else None

    def latest_clip_id(self) -> str | None:
        return self.sink.latest_clip_id() if self.sink is not None else None

    def record_clip(self) -> str:
        asked = [p.name for p in self.pipelines if p.trigger_clip("manual")]
        if not asked:
            return "clips are off, or take no manual trigger, or no camera has a frame yet"
        return f"recording a clip on {', '.join(asked)}"

    def sync_now(self) -> str:
        if self.uplink is None:
            return "uplink not running"
        self.uplink.sync_now()
        return "sync started"

    async def reload_config(self) -> tuple[bool, str]:
        if self.config_path is None:
            return False, "this daemon was started without a config file"
        try:
            await asyncio.to_thread(load_effective, self.config_path)
        except ConfigError as exc:
            return False, str(exc)
        self.request_reload()
        return True, "config valid; restarting the components with it"

    def request_reload(self) -> None:
        self.reload_requested = True
        if self._stop is not None:
            self._stop.set()

    def _restart_with(self, loaded: LoadedConfig) -> None:
        """A new remote configuration is persisted and valid: restart the components with it."""
        self.next_config = loaded
        self.request_reload()

    # ------------------------------------------------------------------ open endpoints

    async def healthz(self, request: web.Request) -> web.Response:
        stuck = self.stuck(30.0)
        body = {"status": "stuck" if stuck else "ok", "stuck": stuck, "ready": self.ready.is_set()}
        return web.json_response(body, status=503 if stuck else 200)

    async def metrics_page(self, request: web.Request) -> web.Response:
        body = self.metrics.render(await self.status())
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def _wait_or_cancel(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()


async def serve(
    config_path: Path | None,
    config: PoleConfig | LoadedConfig,
    on_daemon: Callable[[Daemon], Awaitable[None] | None] | None = None,
) -> int:
    """Run daemons until SIGTERM/SIGINT; SIGHUP or a reload request starts a new one with the re-read
    file (and the persisted remote overlay), a new remote configuration with the overlay it brought."""
    loaded = config if isinstance(config, LoadedConfig) else embedded(config, config_path)
    notifier = Notifier()
    stop = asyncio.Event()
    current: list[Daemon] = []
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        if current:
            current[-1].request_reload()

    loop.add_signal_handler(signal.SIGHUP, reload)
    fatal: list[BaseException] = []
    try:
        while True:
            daemon = Daemon(loaded, config_path, notifier)
            current[:] = [daemon]
            if on_daemon is not None:
                maybe = on_daemon(daemon)
                if maybe is not None:
                    await maybe
            try:
                await daemon.run(stop)
            except* FatalError as group:
                fatal.extend(group.exceptions)
            if fatal or not daemon.reload_requested:
                break
            notifier.send(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)
            if daemon.next_config is not None:
                loaded = daemon.next_config
            else:
                try:
                    loaded = reread(loaded)
                except ConfigError as exc:  # the file changed again since it was checked: keep the old config
                    log.error("reload_refused", error=str(exc))
            configure_logging(loaded.config.logging.level, loaded.config.logging.format, pole_id=loaded.config.pole.id)
            stop.clear()
            log.info("reloading", config=str(config_path), remote_config_version=loaded.version)
    finally:
        notifier.close()
    for error in fatal:
        log.error("fatal", error=str(error))
    return 1 if fatal else 0


def default_config_path() -> Path:
    """``pole.toml`` in systemd's ``$CONFIGURATION_DIRECTORY``, else in /etc/smartpole."""
    base = os.environ.get("CONFIGURATION_DIRECTORY", "").split(":")[0] or "/etc/smartpole"
    return Path(base) / "pole.toml"


def run_daemon(config: PoleConfig | LoadedConfig, config_path: Path) -> int:
    effective = config.config if isinstance(config, LoadedConfig) else config
    configure_logging(effective.logging.level, effective.logging.format, pole_id=effective.pole.id)
    # OpenCV prints its own unstructured warnings (every failed reopen of an absent camera);
    # the camera's state and errors are already in our logs and on the status page.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    log.info("starting", config=str(config_path), version=SOFTWARE_VERSION, python=sys.version.split()[0])
    # Before any model runs: tesseract's plate crops must go through memory, never the SD card.
    use_memory_for_temp_files()
    return uvloop.run(serve(config_path, config))
