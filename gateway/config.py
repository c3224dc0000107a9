"""The pole's configuration: one strict model per TOML table.

Each component owns the model of its own table (the outbox's lives in
``sync.outbox``); this module composes them into the file's shape. Unknown keys
are errors everywhere, every field has a description and a default that works
on a bench.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.logs import LogFormat, LogLevel
from gateway.sensing.air_quality import AirQualityConfig
from gateway.sensing.location import GpsConfig
from gateway.sensing.speed import TrafficConfig
from gateway.vision.config import VisionConfig
from gateway.vision.privacy import PlatePolicy
from gateway.web.server import HttpConfig
from hal.camera.base import CameraConfig
from hal.sensors.config import SensorList
from sync.events import Location
from sync.outbox import OutboxConfig
from sync.policy import EventPolicy
from sync.uplink.base import UplinkConfig

POLE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocationConfig(Strict):
    """Surveyed position of the pole, used when no GPS fix is available."""

    lat: float = Field(..., ge=-90, le=90, description="Latitude in decimal degrees (WGS84).")
    lon: float = Field(..., ge=-180, le=180, description="Longitude in decimal degrees (WGS84).")

    def as_location(self) -> Location:
        return Location(self.lat, self.lon, "config")


class PoleSection(Strict):
    """Identity of this pole."""

    id: str = Field(
        "pole-dev", pattern=POLE_ID_PATTERN, description="Pole id, unique in the city; letters, digits, . _ -."
    )
    location: LocationConfig | None = Field(None, description="Fallback position when GPS has no fix.")


class LoggingConfig(Strict):
    """Log output."""

    level: LogLevel = Field("info", description="Lowest level written: debug, info, warning or error.")
    format: LogFormat = Field(
        "auto", description="'json', 'console', or 'auto' (JSON under systemd or when not on a terminal)."
    )


class PathsConfig(Strict):
    """Where the daemon keeps its files; systemd's $STATE_DIRECTORY wins when set.

    There is no cache: nothing the pole computes is worth keeping across restarts
    but the outbox, and temporary files live in memory (see gateway.tmpfs).
    """

    state_dir: Path = Field(Path("var/state"), description="Durable state (the outbox).")

    def state(self) -> Path:
        return Path(os.environ.get("STATE_DIRECTORY", "").split(":")[0] or self.state_dir)


class PrivacyConfig(Strict):
    """What may leave the pole about people and vehicles."""

    plates: PlatePolicy = Field(default_factory=PlatePolicy, description="Plate text: drop, keyed hash or keep.")


class PoleConfig(Strict):
    """The whole pole configuration file."""

    pole: PoleSection = Field(default_factory=PoleSection, description="Identity and position of the pole.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Log level and format.")
    paths: PathsConfig = Field(default_factory=PathsConfig, description="Where durable state lives.")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="The local SQLite outbox.")
    uplink: UplinkConfig = Field(default_factory=UplinkConfig, description="Sync to the receiver.")
    http: HttpConfig = Field(default_factory=HttpConfig, description="Local ingest API and status page.")
    cameras: list[CameraConfig] = Field(default_factory=list, description="Cameras, one [[cameras]] table each.")
    vision: VisionConfig = Field(default_factory=VisionConfig, description="Detection, tracking, redaction, snapshots.")
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig, description="Plate text policy.")
    policy: EventPolicy = Field(
        default_factory=EventPolicy,
        description="Which events may be committed, and which of their fields are dropped or hashed first "
        "(hashes use privacy.plates.secret).",
    )
    sensors: SensorList = Field(default_factory=list, description="Serial sensors, one [[sensors]] table each.")
    traffic: TrafficConfig = Field(default_factory=TrafficConfig, description="Radar speed and speeding violations.")
    air_quality: AirQualityConfig = Field(default_factory=AirQualityConfig, description="Particulate averaging.")
    gps: GpsConfig = Field(default_factory=GpsConfig, description="GPS location and the clock check.")

    @model_validator(mode="after")
    def _unique_camera_names(self) -> PoleConfig:
        names = [c.name for c in self.cameras]
        if len(names) != len(set(names)):
            raise ValueError(f"two cameras share a name: {sorted(n for n in names if names.count(n) > 1)[0]!r}")
        return self

    @model_validator(mode="after")
    def _policy_hash_needs_secret(self) -> PoleConfig:
        secret = self.privacy.plates.secret
        if self.policy.hashes() and (secret is None or len(secret.get_secret_value()) < 16):
            rule = next(n for n, r in enumerate(self.policy.redact) if r.action == "hash")
            raise ValueError(
                f"policy.redact.{rule}.action: 'hash' needs privacy.plates.secret on this pole "
                "(SMARTPOLE_PRIVACY_PLATES_SECRET, at least 16 characters)"
            )
        return self

    def policy_key(self) -> bytes | None:
        """The HMAC key of the event policy's 'hash' rules: the deployment's plate secret."""
        secret = self.privacy.plates.secret
        return secret.get_secret_value().encode() if secret is not None else None

    def outbox_path(self) -> Path:
        path = self.outbox.path
        return path if path.is_absolute() else self.paths.state() / path
