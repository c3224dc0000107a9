"""Configuration of the vision pipeline (TOML table ``[vision]``).

Positions (counting lines, zones) are fractions of the frame, 0..1 from the
top-left corner, so one configuration fits any resolution the camera gives.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.vision.videoredact import VideoRedactionConfig
from models.redact import RedactionConfig

Label = Literal["person", "bicycle", "car", "motorcycle", "bus", "truck"]
ClipTrigger = Literal["traffic_violation", "line_crossing", "tamper", "manual"]
Recogniser = Literal["tesseract", "ppocr"]
Point = tuple[float, float]

ALL_LABELS: list[Label] = ["person", "bicycle", "car", "motorcycle", "bus", "truck"]
ALL_RECOGNISERS: list[Recogniser] = ["tesseract", "ppocr"]
ALL_CLIP_TRIGGERS: list[ClipTrigger] = ["traffic_violation", "line_crossing", "tamper", "manual"]
VEHICLE_LABELS: list[Label] = ["bicycle", "car", "motorcycle", "bus", "truck"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_point(point: Point) -> Point:
    if not (0.0 <= point[0] <= 1.0 and 0.0 <= point[1] <= 1.0):
        raise ValueError(f"point {list(point)} is outside the frame: coordinates are fractions 0..1")
    return point


class InferenceConfig(Strict):
    """Where the models come from and how much CPU they get."""

    backend: Literal["onnx", "simulated"] = Field(
        "onnx", description="'onnx' runs the shipped models; 'simulated' finds the simulated camera's shapes."
    )
    threads: int = Field(2, ge=1, le=16, description="onnxruntime intra-op threads of each model session.")
    workers: int = Field(
        1, ge=1, le=8, description="Threads that run inference for all cameras (one is right for up to 4 cores)."
    )
    precision: Literal["int8", "fp32"] = Field(
        "int8",
        description="'int8' runs the quantised NanoDet and CenterFace (about 0.6x the time of 'fp32' on a CPU with "
        "int8 dot products, the same recall on the labelled privacy set); 'fp32' the float originals.",
    )
    models_dir: Path | None = Field(
        None, description="Directory of the model files; unset: the weights shipped with SmartPole."
    )


class DetectionConfig(Strict):
    """People and vehicle detection."""

    threshold: float = Field(0.35, gt=0, lt=1, description="Lowest detector score kept.")
    nms_iou: float = Field(0.5, gt=0, lt=1, description="Overlap above which two boxes are one object.")
    interval_frames: int = Field(
        1,
        ge=1,
        le=30,
        description="Detect on one frame in this many (where something moves; the whole-frame pass is kept); the "
        "tracker predicts the boxes between. 3 suits a 25 fps camera whose every frame is redacted for clips.",
    )
    classes: list[Label] = Field(
        default_factory=lambda: list(ALL_LABELS), min_length=1, description="Classes detected."
    )


class MotionConfig(Strict):
    """The motion gate: when and where detection runs."""

    enabled: bool = Field(True, description="Off: detect on every frame, on the whole frame.")
    width: int = Field(160, ge=64, le=640, description="Width of the small grey frame the gate works on.")
    sensitivity: float = Field(
        25.0, gt=0, description="Background subtractor variance threshold; lower finds fainter motion."
    )
    min_area: float = Field(
        0.0005, ge=0, lt=1, description="Smallest moving blob that counts, as a fraction of the frame."
    )
    full_pass_interval_s: float = Field(
        2.0, gt=0, description="Detect on the whole frame at least this often, motion or not (stopped objects)."
    )
    roi: bool = Field(True, description="Detect only in the region that moves when it is small enough.")
    roi_max_fraction: float = Field(
        0.4,
        gt=0,
        le=1,
        description="A moving region larger than this fraction of the frame is detected as a whole frame.",
    )
    roi_margin: float = Field(
        0.25, ge=0, le=1, description="Margin around the moving region, as a fraction of its size."
    )


class TrackerConfig(Strict):
    """Track ids across frames."""

    iou_threshold: float = Field(
        0.2, gt=0, lt=1, description="Least overlap of a detection with a track's predicted box to continue it."
    )
    max_age_s: float = Field(1.5, gt=0, description="A track not seen for this long (where detection ran) ends.")
    min_hits: int = Field(2, ge=1, description="Detections before a track counts (filters one-frame false positives).")


class LineConfig(Strict):
    """A counting line: tracks crossing it are counted per direction and class."""

    name: str = Field(..., min_length=1, max_length=64, description="Line name, in count events.")
    start: Point = Field(..., description="Start point [x, y], fractions of the frame.")
    end: Point = Field(..., description="End point [x, y], fractions of the frame.")
    forward: str = Field(
        "in",
        min_length=1,
        description="Name of crossing in the forward direction: the start-to-end direction turned 90 degrees "
        "clockwise on screen (for a line drawn left to right, moving down the image).",
    )
    backward: str = Field("out", min_length=1, description="Name of crossing the other way.")

    @field_validator("start", "end")
    @classmethod
    def _inside(cls, point: Point) -> Point:
        return _check_point(point)


class ZoneConfig(Strict):
    """A zone: the people and vehicles standing in it are reported as presence."""

    name: str = Field(..., min_length=1, max_length=64, description="Zone name, in presence events.")
    polygon: list[Point] = Field(..., min_length=3, description="Corners [[x, y], ...], fractions of the frame.")

    @field_validator("polygon")
    @classmethod
    def _inside(cls, polygon: list[Point]) -> list[Point]:
        return [_check_point(p) for p in polygon]


class PresenceConfig(Strict):
    """When presence events are emitted."""

    min_interval_s: float = Field(2.0, ge=0, description="Least time between two presence events of one zone.")
    heartbeat_s: float = Field(60.0, gt=0, description="A zone with objects in it is reported at least this often.")
    every_frame: bool = Field(
        False,
        description="Report every analysed frame that has objects (replay does this); off: changes and heartbeats.",
    )


class SnapshotConfig(Strict):
    """The redacted JPEGs attached to events and shown on the status page."""

    max_width: int | None = Field(
        1280, ge=160, description="Snapshots wider than this are scaled down; unset: full size."
    )
    jpeg_quality: int = Field(80, ge=30, le=95, description="JPEG quality.")
    presence_interval_s: float = Field(
        60.0, ge=0, description="Least time between presence events that carry a snapshot (0: every one does)."
    )
    on_plate_read: bool = Field(True, description="Attach a snapshot to plate_read events.")
    on_tamper: bool = Field(True, description="Attach a snapshot to tamper events.")
    status_interval_s: float = Field(
        5.0, gt=0, description="How often the status page's latest snapshot is refreshed when no event made one."
    )


class PlateReadingConfig(Strict):
    """Reading plates of vehicles (candidates are always redacted, read or not)."""

    enabled: bool = Field(True, description="Read plates; off: plates are still found and redacted, never read.")
    recognisers: list[Recogniser] = Field(
        default_factory=lambda: list(ALL_RECOGNISERS),
        min_length=1,
        description="Recognisers that read each candidate; where they agree the read is surest.",
    )
    min_vehicle_width_px: int = Field(
        80, ge=16, description="Narrower vehicles are not read (their plates are too small)."
    )
    min_confidence: float = Field(0.6, ge=0, le=1, description="Least confidence of a read that is reported.")
    pattern: str = Field(
        r"^(?=.*[0-9])(?=.*[A-Z])[A-Z0-9]{4,10}$",
        description="Regular expression a normalised read (A-Z, 0-9) must match to be a plate.",
    )
    attempts_per_track: int = Field(3, ge=1, description="Most reading attempts per vehicle track.")
    candidates_per_vehicle: int = Field(3, ge=1, description="Most candidates read per attempt, best first.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


class HealthConfig(Strict):
    """Camera faults and tamper detection."""

    enabled: bool = Field(True, description="Watch for dark, frozen, covered and moved cameras.")
    dark_level: float = Field(
        20.0, ge=0, le=255, description="Mean brightness (0-255) under which a frame is too dark."
    )
    dark_s: float = Field(10.0, gt=0, description="How long too dark before a camera_fault.")
    frozen_level: float = Field(
        0.05, ge=0, description="Mean change per pixel between frames under which the picture is frozen."
    )
    frozen_s: float = Field(10.0, gt=0, description="How long frozen before a camera_fault.")
    covered_ratio: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Detail (edge energy) under this fraction of the learned normal means the lens is covered.",
    )
    covered_s: float = Field(3.0, gt=0, description="How long covered before a tamper event.")
    moved_similarity: float = Field(
        0.65,
        gt=0,
        lt=1,
        description="Edge correlation with the learned view under this fraction of its normal level means "
        "the camera moved.",
    )
    moved_s: float = Field(5.0, gt=0, description="How long the view must stay moved before a tamper event.")
    learn_s: float = Field(5.0, gt=0, description="Time after start (or after a move) to learn the normal view.")


class ClipConfig(Strict):
    """Short redacted event clips (H.264 MP4) from a ring buffer of frames kept in memory only."""

    enabled: bool = Field(
        False,
        description="Keep clips; every frame that goes into the ring buffer is redacted first (this costs CPU on "
        "every frame, see README: Vision on the pole).",
    )
    triggers: list[ClipTrigger] = Field(
        default_factory=lambda: list(ALL_CLIP_TRIGGERS),
        description="What makes a clip: 'traffic_violation' (radar and plate, this camera), 'line_crossing' (a track "
        "of line_classes crossing a counting line), 'tamper' (when it begins), 'manual' (the status page's button).",
    )
    line_classes: list[Label] = Field(
        default_factory=lambda: list(VEHICLE_LABELS),
        description="Classes whose counting-line crossings make a clip.",
    )
    pre_s: float = Field(5.0, ge=0, le=30, description="Seconds of video before the trigger.")
    post_s: float = Field(5.0, gt=0, le=30, description="Seconds of video after the trigger.")
    max_s: float = Field(
        30.0,
        gt=0,
        le=120,
        description="Longest clip: triggers during a clip extend it (each is listed in it) up to this length.",
    )
    fps: float = Field(
        10.0, gt=0, le=60, description="Most frames per second kept (and redacted); the camera's rate if lower."
    )
    max_width: int = Field(
        640,
        ge=160,
        le=3840,
        description="Frames wider than this are scaled down (after redaction) for the clip: 640 px keeps a default "
        "clip (10 s at 10 fps, as I420) in 35 MB.",
    )
    max_bytes: int = Field(
        48 * 2**20,
        ge=2**20,
        description="Most memory for the redacted frames in the ring buffer and in clips being collected; past it the "
        "oldest frames go (a clip then starts later).",
    )
    crf: int = Field(28, ge=15, le=45, description="H.264 constant rate factor: higher is smaller and coarser.")
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"] = Field(
        "veryfast", description="x264 preset: faster uses less CPU for larger files."
    )
    redaction: VideoRedactionConfig = Field(
        default_factory=VideoRedactionConfig, description="How the redaction passes are spread over the frames."
    )


def _whole_frame() -> list[ZoneConfig]:
    return [ZoneConfig(name="frame", polygon=[(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)])]


class VisionConfig(Strict):
    """The vision pipeline: detection, tracking, counting, plates, redaction, snapshots, camera health."""

    enabled: bool = Field(True, description="Run the vision pipeline for the configured cameras.")
    inference: InferenceConfig = Field(default_factory=InferenceConfig, description="Models and CPU.")
    detection: DetectionConfig = Field(default_factory=DetectionConfig, description="People and vehicle detection.")
    motion: MotionConfig = Field(default_factory=MotionConfig, description="Motion gate.")
    tracker: TrackerConfig = Field(default_factory=TrackerConfig, description="Tracking.")
    lines: list[LineConfig] = Field(default_factory=list, description="Counting lines ([[vision.lines]]).")
    zones: list[ZoneConfig] = Field(
        default_factory=_whole_frame,
        description="Presence zones ([[vision.zones]]); default: the whole frame, named 'frame'.",
    )
    presence: PresenceConfig = Field(default_factory=PresenceConfig, description="Presence event timing.")
    plates: PlateReadingConfig = Field(default_factory=PlateReadingConfig, description="Plate reading.")
    redaction: RedactionConfig = Field(default_factory=RedactionConfig, description="Face and plate redaction.")
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig, description="Redacted snapshots.")
    clips: ClipConfig = Field(default_factory=ClipConfig, description="Redacted event clips.")
    health: HealthConfig = Field(default_factory=HealthConfig, description="Camera faults and tamper.")

    @field_validator("lines", "zones")
    @classmethod
    def _unique_names(cls, items: list[LineConfig] | list[ZoneConfig]) -> list[LineConfig] | list[ZoneConfig]:
        names = [i.name for i in items]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate names: {', '.join(duplicates)}")
        return items
