"""Remote configuration: the part of a pole's configuration an admin may change from the receiver,
how overlays are merged, and their versions. Shared by the pole and the receiver.

An *overlay* is a partial pole configuration (the shape of ``pole.toml``) limited to
:class:`RemoteOverlay`: detection, tracking, zones and counting lines, presence,
plate reading, camera health and snapshots (``[vision]``), camera frame rates
(``[cameras.NAME] fps``, by camera name), the plate policy's mode
(``[privacy.plates] mode``), the event policy (``[policy]``), the uplink's batch and
bandwidth limits, and the sensor settings of ``[air_quality]``, ``[traffic]`` and
``[gps]``. Everything else stays in the pole's own file: its id, paths, the uplink's
URL and credentials, the local server, the outbox, models, redaction and clips, serial
ports. Such keys are refused by name, and secrets never travel.

Merging and versions are plain data, in :mod:`sync.overlays` (re-exported here): tables
merge key by key, anything else (a value, a list such as ``zones`` or ``policy.redact``)
is replaced whole; a pole's effective overlay is the overlays of its tags, in tag-name
order, then its own on top, and the pole applies it over its file. Versions are content
hashes of the effective overlay (``"0"`` when it is empty), so the pole and the receiver
compute the same version from the same overlay, a tag's change moves the version of
every pole carrying it, and a pole can check that what it fetched is what the version
names.

Importing this module loads the pole's configuration models, and with them OpenCV,
numpy and onnxruntime (their modules define some of the models): the receiver imports
it only when it first validates an overlay.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from gateway.config import PoleConfig
from gateway.configfile import ConfigError, describe_error, validate
from gateway.sensing.air_quality import AirQualityConfig
from gateway.sensing.location import GpsConfig
from gateway.sensing.speed import TrafficConfig
from gateway.vision.config import (
    DetectionConfig,
    HealthConfig,
    LineConfig,
    MotionConfig,
    PlateReadingConfig,
    PresenceConfig,
    SnapshotConfig,
    TrackerConfig,
    ZoneConfig,
)
from gateway.vision.privacy import PlatePolicy
from hal.camera.base import CameraConfig
from sync.overlays import EMPTY_VERSION, OverlayError, effective_overlay, merge, overlay_version
from sync.policy import EventPolicy
from sync.uplink.base import UplinkConfig

FILE_NAME = "remote-config.json"

__all__ = [
    "EMPTY_VERSION",
    "FILE_NAME",
    "OverlayError",
    "RemoteOverlay",
    "apply_overlay",
    "effective_config",
    "effective_overlay",
    "merge",
    "overlay_version",
    "validate_overlay",
]


def _subset(name: str, model: type[BaseModel], fields: list[str]) -> type[BaseModel]:
    """A strict model with some of ``model``'s fields, their types, limits and descriptions included."""
    definitions: dict[str, Any] = {f: (model.model_fields[f].annotation, model.model_fields[f]) for f in fields}
    return cast(
        type[BaseModel],
        create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=model.__doc__, **definitions),
    )


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


CameraOverlay = _subset("CameraOverlay", CameraConfig, ["fps"])
PlatesOverlay = _subset("PlatesOverlay", PlatePolicy, ["mode"])
UplinkOverlay = _subset(
    "UplinkOverlay",
    UplinkConfig,
    ["max_batch_events", "max_batch_bytes", "bandwidth_bytes_per_s", "heartbeat_s", "linger_s", "gzip_level"],
)


class VisionOverlay(Strict):
    """The remotely changeable part of ``[vision]``."""

    detection: DetectionConfig | None = None
    motion: MotionConfig | None = None
    tracker: TrackerConfig | None = None
    lines: list[LineConfig] | None = None
    zones: list[ZoneConfig] | None = None
    presence: PresenceConfig | None = None
    plates: PlateReadingConfig | None = None
    snapshots: SnapshotConfig | None = None
    health: HealthConfig | None = None


class PrivacyOverlay(Strict):
    plates: PlatesOverlay | None = None  # type: ignore[valid-type]


class RemoteOverlay(Strict):
    """Everything an overlay may hold; each table is optional, and only the keys given change."""

    vision: VisionOverlay | None = None
    cameras: dict[str, CameraOverlay] | None = Field(  # type: ignore[valid-type]
        None, description="Per camera, by name: [cameras.cam0] fps = 5."
    )
    privacy: PrivacyOverlay | None = None
    policy: EventPolicy | None = None
    uplink: UplinkOverlay | None = None  # type: ignore[valid-type]
    air_quality: AirQualityConfig | None = None
    traffic: TrafficConfig | None = None
    gps: GpsConfig | None = None


def _field_type(model: type[BaseModel], name: str) -> Any:
    info = model.model_fields.get(name)
    return None if info is None else info.annotation


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds: itself, or inside ``X | None``, ``list[X]``, unions."""
    found: list[type[BaseModel]] = []
    stack = [annotation]
    while stack:
        kind = stack.pop()
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            found.append(kind)
        else:
            stack.extend(typing.get_args(kind))
    return found


def _pole_setting(loc: tuple[int | str, ...]) -> bool:
    """True if ``loc`` (an overlay key) names a setting of the pole's file: one that exists but
    may not be changed remotely."""
    models: list[type[BaseModel]] = [PoleConfig]
    parts = [p for p in loc if isinstance(p, str)]
    if parts[:1] == ["cameras"] and len(parts) >= 2:
        parts = ["cameras", *parts[2:]]  # cameras are named in an overlay, listed in the file
    for part in parts:
        inner = [m for model in models for m in _models_in(_field_type(model, part))]
        if not any(part in model.model_fields for model in models):
            return False
        models = inner
    return True


def _secret(loc: tuple[int | str, ...]) -> bool:
    return bool(loc) and loc[-1] in {"token", "password", "password_hash", "ingest_token", "secret"}


def validate_overlay(doc: Any) -> dict[str, Any]:
    """The overlay ``doc`` as plain JSON data holding only the keys given, or :class:`OverlayError`
    naming every problem by its dotted key."""
    if not isinstance(doc, dict):
        raise OverlayError(["(top level): an overlay is a table (a JSON object) of pole settings"])
    try:
        overlay = RemoteOverlay.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc)
            if err["type"] == "extra_forbidden" and _secret(loc):
                problems.append(f"{key}: a secret; secrets never travel in remote configuration")
            elif err["type"] == "extra_forbidden" and _pole_setting(loc):
                problems.append(f"{key}: may not be changed remotely (only in the pole's own file)")
            else:
                problems.append(describe_error(err))
        raise OverlayError(problems) from None
    return cast(dict[str, Any], overlay.model_dump(mode="json", exclude_unset=True))


def apply_overlay(doc: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """A pole configuration document (as read from its TOML file) with ``overlay`` applied.
    A camera the overlay names that the document lacks is an :class:`OverlayError`."""
    rest = {k: v for k, v in overlay.items() if k != "cameras"}
    out = merge(copy.deepcopy(dict(doc)), rest)
    cameras = overlay.get("cameras") or {}
    if cameras:
        listed = [dict(c) if isinstance(c, Mapping) else c for c in out.get("cameras", [])]
        default_name = CameraConfig.model_fields["name"].default
        names = [c.get("name", default_name) if isinstance(c, dict) else None for c in listed]
        problems = []
        for name, changes in cameras.items():
            if name not in names:
                have = ", ".join(repr(n) for n in names if n) or "none"
                problems.append(f"cameras.{name}: this pole has no camera of that name (it has {have})")
                continue
            camera = listed[names.index(name)]
            listed[names.index(name)] = merge(camera, changes)
        if problems:
            raise OverlayError(problems)
        out["cameras"] = listed
    return out


def effective_config(doc: Mapping[str, Any], overlay: Mapping[str, Any], source: Path) -> PoleConfig:
    """The pole configuration ``doc`` with ``overlay`` applied and validated as a whole
    (:class:`ConfigError` naming ``source`` and every problem's dotted key)."""
    try:
        merged = apply_overlay(doc, overlay)
    except OverlayError as exc:
        raise ConfigError(source, exc.problems) from None
    return validate(PoleConfig, merged, source)
