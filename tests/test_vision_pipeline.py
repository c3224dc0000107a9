"""The pipeline's parts (motion gate, tracker, lines, zones, camera health) and the pipeline itself."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from gateway.sensing.sightings import PlateSighting
from gateway.vision.config import (
    HealthConfig,
    InferenceConfig,
    LineConfig,
    MotionConfig,
    PresenceConfig,
    SnapshotConfig,
    TrackerConfig,
    VisionConfig,
    ZoneConfig,
)
from gateway.vision.counting import LineCounter
from gateway.vision.health import CameraHealth
from gateway.vision.motion import MotionGate, small_grey
from gateway.vision.pipeline import VisionPipeline
from gateway.vision.privacy import PlatePolicy
from gateway.vision.setup import load_parts, make_executor
from gateway.vision.tracker import Tracker
from gateway.vision.zones import ZonePresence
from hal.camera.base import CameraConfig, Frame
from hal.camera.factory import open_camera
from hal.camera.opencv import OpenCVCamera
from hal.camera.stills import StillImages
from models.detection import Detection
from sync.events import Priority
from tests.helpers.vision import BUS, CLIP, ListSink, moving_faces, real_parts

SECRET = "a-deployment-secret-of-some-length"


def clip_frames(step: int = 1) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(CLIP))
    frames: list[np.ndarray] = []
    while True:
        ok, frame = cap.read()
        if not ok:
            return frames[::step]
        frames.append(frame)


def person(x: float, y: float, w: float = 20, h: float = 60) -> Detection:
    return Detection("person", 0.9, (x, y, x + w, y + h))


# ---------------------------------------------------------------- motion gate


def test_the_motion_gate_finds_where_something_moves() -> None:
    gate = MotionGate(MotionConfig())
    background = np.full((480, 640, 3), 90, np.uint8)
    for i in range(30):
        # The first frame is all new to the background model: everything moves.
        assert gate.update(small_grey(background, 160), 640, 480).moving == (i == 0)
    frame = background.copy()
    cv2.rectangle(frame, (400, 300), (440, 400), (20, 220, 20), -1)
    result = gate.update(small_grey(frame, 160), 640, 480)
    assert result.moving and result.region is not None
    x1, y1, x2, y2 = result.region
    assert x1 <= 400 and y1 <= 300 and x2 >= 440 and y2 >= 400
    assert (x2 - x1) * (y2 - y1) < 0.4 * 640 * 480


def test_a_10_px_face_moving_across_640x480_is_a_blob_where_it_is() -> None:
    """At 160 px wide the face is under 3 px: the opening that cleans the motion mask would erase it."""
    gate = MotionGate(MotionConfig())
    video, boxes = moving_faces([10], 12)
    found = []
    for i, (frame, (face,)) in enumerate(zip(video, boxes, strict=True)):
        blobs = gate.update(small_grey(frame, 160), 640, 480).blobs
        if i >= 2:
            cx, cy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
            found.append(any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in blobs))
    assert sum(found) >= 0.8 * len(found), found


# ---------------------------------------------------------------- tracker


def test_tracks_keep_their_ids_and_a_one_frame_blip_never_counts() -> None:
    tracker = Tracker(TrackerConfig(min_hits=2))
    ids = []
    for i in range(10):
        detections = [person(100 + 8 * i, 100), person(400 - 8 * i, 200)]
        if i == 4:
            detections.append(person(600, 50))  # a one-frame false positive
        confirmed = tracker.update(detections, i * 0.1, None)
        if i >= 1:
            ids.append(sorted(t.id for t in confirmed))
    assert all(frame_ids == ids[0] for frame_ids in ids) and len(ids[0]) == 2


def test_a_track_outside_the_detected_region_is_not_aged() -> None:
    tracker = Tracker(TrackerConfig(min_hits=1, max_age_s=0.5))
    tracker.update([person(10, 10), person(500, 300)], 0.0, None)
    for i in range(1, 20):
        tracker.update([person(500, 300)], i * 0.1, (400.0, 250.0, 640.0, 480.0))
    assert len(tracker.confirmed()) == 2
    tracker.update([person(500, 300)], 2.1, None)
    assert len(tracker.confirmed()) == 1


# ---------------------------------------------------------------- counting lines and zones


def test_crossings_are_counted_per_direction_and_class_per_minute() -> None:
    line = LineConfig(name="kerb", start=(0.0, 0.5), end=(1.0, 0.5), forward="south", backward="north")
    counter = LineCounter([line])
    tracker = Tracker(TrackerConfig(min_hits=1))
    ts = 1_700_000_000.0
    for i in range(20):
        down = person(100, 150 + 10 * i)  # walks down across y = 240
        up = Detection("car", 0.9, (400, 330 - 10 * i, 480, 370 - 10 * i))
        tracks = tracker.update([down, up], i * 0.1, None)
        counter.update(tracks, 640, 480, ts + i * 0.1)
    jitter = Tracker(TrackerConfig(min_hits=1))
    for i in range(20):  # standing on the line, swaying by 2 px
        counter.update(jitter.update([person(300, 178 + (2 if i % 2 else -2))], i * 0.1, None), 640, 480, ts + 2)
    assert counter.due(ts + 30) == []
    (report,) = counter.due(ts + 60)
    assert report.line == "kerb" and report.period_s == 60
    assert report.period_start == (ts // 60) * 60
    assert report.counts == {"south": {"person": 1}, "north": {"car": 1}}
    assert counter.flush() == []


def test_zones_report_changes_heartbeats_and_the_end() -> None:
    zone = ZoneConfig(name="crossing", polygon=[(0.0, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0)])
    presence = ZonePresence([zone], PresenceConfig(min_interval_s=1.0, heartbeat_s=10.0))
    tracker = Tracker(TrackerConfig(min_hits=1))
    reports = []
    for t in np.arange(0, 30, 0.5):
        detections = [person(100, 300)] if t < 20 else []
        if 5 <= t < 20:
            detections.append(person(300, 100))  # outside the zone
        if 8 <= t < 20:
            detections.append(Detection("bus", 0.8, (300, 300, 500, 470)))
        tracks = tracker.update(detections, float(t), None)
        reports += [(float(t), r.counts) for r in presence.due(tracks, 640, 480, float(t))]
    assert reports[0] == (0.0, {"person": 1})
    assert (8.0, {"bus": 1, "person": 1}) in reports
    assert (18.0, {"bus": 1, "person": 1}) in reports  # heartbeat
    assert reports[-1][1] == {} and 20 <= reports[-1][0] <= 22
    assert len(reports) == 4


# ---------------------------------------------------------------- camera health


def test_no_camera_fault_or_tamper_on_the_street_clip() -> None:
    health = CameraHealth(HealthConfig())
    changes = []
    for i, frame in enumerate(clip_frames()):
        changes += health.observe(small_grey(frame, 160), i / 10)
    assert changes == []


def test_covered_dark_frozen_and_moved_are_detected() -> None:
    config = HealthConfig(dark_s=2, frozen_s=2, covered_s=1, moved_s=1, learn_s=2)
    frames = clip_frames()
    height, width = frames[0].shape[:2]
    shift = np.float32([[1, 0, 0.08 * width], [0, 1, 0]])

    def run(transform: object, end: int = len(frames)) -> list[tuple[str, bool]]:
        health = CameraHealth(config)
        seen: list[tuple[str, bool]] = []
        for i, frame in enumerate(frames):
            if 50 <= i < end:
                frame = transform(frame)  # type: ignore[operator]
            seen += [(c.condition, c.active) for c in health.observe(small_grey(frame, 160), i / 10)]
        return seen

    def hand(f: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(f // 6, (0, 0), 25)

    assert run(hand, end=90) == [("covered", True), ("dark", True), ("dark", False), ("covered", False)]
    assert run(lambda f: frames[50]) == [("frozen", True)]
    assert run(lambda f: cv2.warpAffine(f, shift, (width, height), borderMode=cv2.BORDER_REFLECT)) == [("moved", True)]


# ---------------------------------------------------------------- the pipeline


async def run_stills(paths: list[Path], policy: PlatePolicy, **kwargs: object) -> tuple[VisionPipeline, ListSink]:
    sink = ListSink()
    config = VisionConfig(
        motion=MotionConfig(enabled=False),
        health=HealthConfig(enabled=False),
        tracker=TrackerConfig(min_hits=1),
    )
    executor = make_executor(config)
    camera = StillImages(paths)
    pipeline = VisionPipeline(camera, real_parts(), config, policy, sink, executor, **kwargs)  # type: ignore[arg-type]
    await pipeline.run(asyncio.Event())
    executor.shutdown()
    return pipeline, sink


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.parametrize("mode", ["drop", "hash", "keep"])
async def test_the_plate_text_follows_the_policy(mode: str) -> None:
    policy = PlatePolicy(mode=mode, secret=SECRET if mode == "hash" else None)
    sightings: list[PlateSighting] = []
    pipeline, sink = await run_stills([BUS], policy, on_plate=sightings.append)
    (event,) = sink.of("plate_read")
    assert event.priority == Priority.EVENT and len(event.media) == 1
    assert event.data["vehicle"] == "bus" and event.data["plate_policy"] == mode
    everything = sink.dump() + repr(sightings)
    digest = hmac.new(SECRET.encode(), b"EBY584", hashlib.sha256).hexdigest()
    if mode == "keep":
        assert event.data["plate_text"] == "EBY584"
    else:
        # Every text the events and sightings carry; numbers (timestamps) may hold "584" by chance.
        texts = " ".join(_strings([e.data for e in sink.events] + [dataclasses.asdict(s) for s in sightings]))
        assert "EBY" not in texts and "584" not in texts
    if mode == "hash":
        assert event.data["plate_hmac"] == digest
    else:
        assert digest not in everything
    (sighting,) = sightings
    assert sighting.plate == policy.fields("EBY584") and sighting.camera == "replay"
    assert sighting.evidence_jpeg == event.media[0] and sighting.track_id == event.data["track_id"]
    stats = pipeline.stats()
    assert stats.plates_read == 1 and stats.snapshots.redactions["plate"] >= 1
    assert stats.snapshots.latest_jpeg is not None and stats.snapshots.latest_jpeg.startswith(b"\xff\xd8")


async def test_stats_describe_the_models_stages_and_camera() -> None:
    pipeline, sink = await run_stills([BUS], PlatePolicy())
    stats = pipeline.stats()
    assert stats.frames_processed == 1 and stats.detection_passes == 1
    assert {"nanodet_int8", "centerface_int8", "ppocr_det", "ppocr_rec"} <= set(stats.models_loaded)
    assert any(m.startswith("tesseract 5") for m in stats.models_loaded)
    assert {m.name for m in stats.models if m.inferences} >= {"nanodet", "centerface", "ppocr_det"}
    assert {"detect", "track", "plates", "redact", "encode", "commit"} <= set(stats.stage_ms)
    assert stats.camera.frames_read == 1 and stats.events["presence"] == 1


async def test_the_pipeline_waits_for_an_absent_camera_without_stalling() -> None:
    sink = ListSink()
    config = VisionConfig(inference=InferenceConfig(backend="simulated"))
    camera = OpenCVCamera(CameraConfig(name="gone", source="/dev/video98", backoff_initial_s=0.1, backoff_max_s=0.2))
    executor = make_executor(config)
    pipeline = VisionPipeline(camera, load_parts(config), config, PlatePolicy(), sink, executor)
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    progress = []
    for _ in range(4):
        await asyncio.sleep(0.6)
        progress.append(pipeline.last_progress)
    stop.set()
    await asyncio.wait_for(task, 5)
    executor.shutdown()
    assert all(b > a for a, b in zip(progress, progress[1:], strict=False))
    assert time.monotonic() - progress[-1] < 1.5
    (fault,) = sink.of("camera_fault")
    assert fault.priority == Priority.ALERT
    assert fault.data["fault"] == "down" and fault.data["active"] is True and fault.data["camera"] == "gone"
    assert "down" in pipeline.stats().active_conditions


async def test_the_simulated_pole_sees_and_redacts_its_shapes() -> None:
    sink = ListSink()
    config = VisionConfig(
        inference=InferenceConfig(backend="simulated"), snapshots=SnapshotConfig(presence_interval_s=0)
    )
    executor = make_executor(config)
    camera = open_camera(CameraConfig(name="sim", source="simulated", fps=20))
    pipeline = VisionPipeline(camera, load_parts(config), config, PlatePolicy(), sink, executor)
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    await asyncio.sleep(4)
    stop.set()
    await task
    executor.shutdown()
    presence = sink.of("presence")
    assert presence and all(e.media for e in presence if e.data["total"])
    assert pipeline.stats().snapshots.redactions["face"] > 0


async def test_a_frame_of_nothing_yields_no_event() -> None:
    sink = ListSink()
    config = VisionConfig(motion=MotionConfig(enabled=False), health=HealthConfig(enabled=False))
    executor = make_executor(config)
    pipeline = VisionPipeline(StillImages([]), real_parts(), config, PlatePolicy(), sink, executor)
    blank = np.full((480, 640, 3), 128, np.uint8)
    await pipeline.process(Frame(blank, "c", 1, time.monotonic(), time.time(), 0.0))
    executor.shutdown()
    assert sink.events == []
