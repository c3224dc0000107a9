"""The events the vision pipeline emits: one builder per type, the schema in each TypedDict.

Coordinates are fractions of the frame (0..1 from the top-left), times are
epoch seconds (UTC), confidences 0..1. Priorities:

- ``camera_fault`` and ``tamper`` are ALERT: a pole that cannot see is an
  operator's problem and must survive a full disk; they are rare (state
  changes only), so their weight is bounded.
- ``presence``, ``count`` and ``plate_read`` are EVENT. The ones that carry a
  snapshot are heavier; the snapshot intervals in ``[vision.snapshots]``
  bound how many do.
- ``clip`` is MEDIA: a redacted video is the first thing to go under the disk
  cap and the last to be sent; it names the events that triggered it.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from gateway.vision.counting import CountReport
from gateway.vision.health import HealthChange
from gateway.vision.zones import PresenceReport
from models.detection import Box
from sync.events import Location, NewEvent, Priority

PRESENCE = "presence"
COUNT = "count"
PLATE_READ = "plate_read"
CAMERA_FAULT = "camera_fault"
TAMPER = "tamper"
CLIP = "clip"

PRIORITIES: dict[str, Priority] = {
    PRESENCE: Priority.EVENT,
    COUNT: Priority.EVENT,
    PLATE_READ: Priority.EVENT,
    CAMERA_FAULT: Priority.ALERT,
    TAMPER: Priority.ALERT,
    CLIP: Priority.MEDIA,
}


class SnapshotInfo(TypedDict):
    """Present when the event carries a snapshot: its size and what was covered in it."""

    width: int
    height: int
    faces_redacted: int
    plates_redacted: int


class PresenceData(TypedDict):
    """``presence``: who is in a zone now. Sent on change, as a heartbeat, and once when the zone empties."""

    camera: str
    zone: str
    counts: dict[str, int]  # label -> objects in the zone (labels absent when 0); {} when empty
    total: int
    track_ids: list[int]
    snapshot: NotRequired[SnapshotInfo]
    snapshot_withheld: NotRequired[str]  # why no snapshot could be made (redaction unavailable)


class CountData(TypedDict):
    """``count``: crossings of one counting line during one period (a minute)."""

    camera: str
    line: str
    period_start: float  # epoch seconds, start of the period
    period_s: float
    counts: dict[str, dict[str, int]]  # direction name -> label -> crossings


class PlateReadData(TypedDict):
    """``plate_read``: a vehicle's plate was read. The text follows the plate policy."""

    camera: str
    track_id: int | None
    vehicle: str  # label of the vehicle
    confidence: float
    engines: list[str]  # recognisers that agreed on the text
    plate_box: list[float]  # [x1, y1, x2, y2], fractions of the frame
    plate_policy: str  # 'drop', 'hash' or 'keep'
    plate_hmac: NotRequired[str]  # policy 'hash': HMAC-SHA256 (hex) of the normalised text
    plate_text: NotRequired[str]  # policy 'keep': the normalised text (A-Z, 0-9)
    snapshot: NotRequired[SnapshotInfo]
    snapshot_withheld: NotRequired[str]


class CameraFaultData(TypedDict):
    """``camera_fault``: the camera is (``active``) or is no longer down, dark or frozen."""

    camera: str
    fault: str  # 'down', 'dark' or 'frozen'
    active: bool
    score: float  # dark: mean brightness 0-255; frozen: mean change per pixel; down: 0
    detail: str


class TamperData(TypedDict):
    """``tamper``: the lens is (``active``) or is no longer covered; or the camera was moved (one-off)."""

    camera: str
    kind: str  # 'covered' or 'moved'
    active: bool
    score: float  # covered: detail as a fraction of normal; moved: shift in px of the 160-px analysis frame
    detail: str
    snapshot: NotRequired[SnapshotInfo]
    snapshot_withheld: NotRequired[str]


class ClipData(TypedDict):
    """``clip``: a redacted H.264 MP4 of ``duration_s`` around one or more triggers (the event's media)."""

    camera: str
    triggers: list[dict[str, Any]]  # each: type, ts, and event_id (violation, tamper) or line details
    start_ts: float  # wall time of the first frame
    end_ts: float
    duration_s: float
    frames: int
    fps: float
    width: int
    height: int
    codec: str  # 'h264'
    container: str  # 'mp4'
    bytes: int
    faces_redacted: int  # covered faces summed over frames
    plates_redacted: int


def normalised_box(box: Box, width: int, height: int) -> list[float]:
    return [round(box[0] / width, 4), round(box[1] / height, 4), round(box[2] / width, 4), round(box[3] / height, 4)]


def presence(camera: str, report: PresenceReport) -> PresenceData:
    return PresenceData(
        camera=camera,
        zone=report.zone,
        counts=dict(report.counts),
        total=report.total,
        track_ids=list(report.track_ids),
    )


def count(camera: str, report: CountReport) -> CountData:
    return CountData(
        camera=camera,
        line=report.line,
        period_start=report.period_start,
        period_s=report.period_s,
        counts=report.counts,
    )


def plate_read(
    camera: str,
    track_id: int | None,
    vehicle: str,
    confidence: float,
    engines: tuple[str, ...],
    plate_box: list[float],
    plate_fields: dict[str, Any],
) -> PlateReadData:
    data: dict[str, Any] = {
        "camera": camera,
        "track_id": track_id,
        "vehicle": vehicle,
        "confidence": round(confidence, 3),
        "engines": list(engines),
        "plate_box": plate_box,
        **plate_fields,
    }
    return data  # type: ignore[return-value]


def camera_fault(camera: str, change: HealthChange) -> CameraFaultData:
    return CameraFaultData(
        camera=camera, fault=change.condition, active=change.active, score=round(change.score, 3), detail=change.detail
    )


def tamper(camera: str, change: HealthChange) -> TamperData:
    return TamperData(
        camera=camera, kind=change.condition, active=change.active, score=round(change.score, 3), detail=change.detail
    )


def new_event(type_: str, data: Any, ts: float, location: Location | None, media: bytes | None = None) -> NewEvent:
    return NewEvent(
        type=type_,
        data=dict(data),
        priority=PRIORITIES[type_],
        ts=ts,
        location=location,
        media=(media,) if media is not None else (),
    )
