"""The pole's status, as one set of frozen dataclasses.

The daemon builds a :class:`PoleStatus` in one place (``Daemon.status``); the
status page, ``/status.json``, the Prometheus collector and the uplink's status
block all read it by attribute. A component the pole does not run (no uplink
yet, no sensors) has a typed empty state, so readers never test for its absence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.sensing.location import ClockStatus
from sync.events import Location
from sync.outbox import DeadLetter, OutboxStats
from sync.uplink.base import UplinkState, UplinkStateName


@dataclass(frozen=True, slots=True)
class PoleInfo:
    id: str
    software_version: str
    config_version: str  # the fingerprint of the pole's own file
    started_at: float
    uptime_s: float
    location: Location | None
    clock: str | None  # "ok, +0.12 s from GPS"; None until GPS has checked it
    remote_config_version: str = "0"  # the remote overlay applied ("0": none)
    remote_config_target: str | None = None  # the version the receiver's last reply named
    remote_config_error: str | None = None  # why the target (or the persisted overlay) is not applied


@dataclass(frozen=True, slots=True)
class CameraStatus:
    name: str
    kind: str
    state: str
    up: bool
    frames_read: int
    frames_dropped: int
    last_frame_age_s: float | None
    read_fps: float
    pipeline_fps: float
    reopens: int
    last_error: str | None
    conditions: list[str]
    stage_ms: dict[str, float]


@dataclass(frozen=True, slots=True)
class ModelStatus:
    name: str
    loaded: bool
    inference_ms_p50: float | None
    calls: int


@dataclass(frozen=True, slots=True)
class SensorStatus:
    name: str
    kind: str
    port: str
    state: str
    connected: bool
    readings_total: int
    errors: dict[str, int]
    last_reading: dict[str, Any] | None
    last_reading_at: float | None


@dataclass(frozen=True, slots=True)
class UplinkStatus:
    state: UplinkStateName
    last_success: float | None
    last_error: str | None
    last_error_at: float | None
    backoff_s: float
    eta_s: float | None
    batches: dict[str, int]
    events_sent: int
    bytes_sent: int
    remote_config_version: str | None
    warning: str | None = None

    @classmethod
    def starting(cls) -> UplinkStatus:
        """Before the uplink exists."""
        return cls("starting", None, None, None, 0.0, None, {}, 0, 0, None)

    @classmethod
    def of(cls, state: UplinkState, backlog: int) -> UplinkStatus:
        rate = state.drain_events_per_s
        eta = backlog / rate if backlog and rate > 0 else (0.0 if not backlog else None)
        return cls(
            state.state,
            state.last_success,
            state.last_error,
            state.last_error_at,
            state.backoff_s,
            eta,
            dict(state.batches),
            state.events_sent,
            state.bytes_sent,
            state.remote_config_version,
            state.warning,
        )


@dataclass(frozen=True, slots=True)
class RecentEventStatus:
    id: str
    seq: int
    type: str
    priority: str
    ts: float
    data: dict[str, Any]
    thumb: bool  # a redacted picture is kept for the page at /thumbs/{id}.jpg


@dataclass(frozen=True, slots=True)
class DiskStatus:
    free_bytes: int
    total_bytes: int
    path: str


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    name: str
    running: bool
    restarts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class PoleStatus:
    """Everything the pole says about itself, at ``now``."""

    now: float
    pole: PoleInfo
    outbox: OutboxStats
    uplink: UplinkStatus
    disk: DiskStatus
    cameras: list[CameraStatus] = field(default_factory=list)
    snapshot_seq: int | None = None
    models: list[ModelStatus] = field(default_factory=list)
    redactions: dict[str, int] = field(default_factory=dict)
    sensors: list[SensorStatus] = field(default_factory=list)
    clock: ClockStatus | None = None  # None when the pole runs no sensors
    dead_letters: list[DeadLetter] = field(default_factory=list)
    recent_events: list[RecentEventStatus] = field(default_factory=list)
    components: list[ComponentStatus] = field(default_factory=list)

    @property
    def backlog(self) -> int:
        return sum(self.outbox.depth.values())

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``/status.json``."""
        return asdict(self)

    def status_block(self) -> dict[str, Any]:
        """What the pole reports upstream with every batch (the ``status`` of wire protocol v1)."""
        block: dict[str, Any] = {
            "backlog": self.outbox.depth,
            "oldest_age_s": self.outbox.oldest_age_s,
            "outbox_bytes": self.outbox.bytes_used,
            "disk_free_bytes": self.disk.free_bytes,
            "dead_letters": self.outbox.dead_letters,
            "software_version": self.pole.software_version,
            "config_version": self.pole.remote_config_version,
            "config_error": self.pole.remote_config_error,
            "config_file_version": self.pole.config_version,
            "uptime_s": round(self.pole.uptime_s, 1),
            "cameras": {c.name: c.state for c in self.cameras},
        }
        if self.clock is not None:
            block["clock"] = asdict(self.clock)
            block["sensors"] = {s.name: s.state for s in self.sensors}
        return block
