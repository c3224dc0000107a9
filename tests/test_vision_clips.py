"""Redacted event clips: every frame of the MP4 is redacted, nothing is kept without redaction, memory is bounded.

The synthetic video moves real faces of 10, 14, 20 and 40 px across the empty
street; the clip made of it is decoded again with PyAV and every face box of
every frame is measured with ``residual_detail`` (the README's bar, 0.3). The
control encodes the same frames unredacted and finds every face far above the
bar, so the test can fail.
"""

from __future__ import annotations

import asyncio
import io
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.replay import replay_main
from gateway.vision.clips import ClipRecorder
from gateway.vision.config import ClipConfig, VisionConfig
from gateway.vision.mp4 import encode_mp4, is_mp4
from gateway.vision.pipeline import VisionParts, VisionPipeline
from gateway.vision.privacy import PlatePolicy
from gateway.vision.videoredact import RedactedFrame, TrackBox, VideoRedactionConfig, VideoRedactor
from gateway.web.login import WebAuth
from gateway.web.status_page import StatusPage
from hal.camera.base import CameraConfig, Frame
from hal.camera.simulated import SimulatedCamera
from models.detection import Box, Detection, to_pixels
from models.redact import REDACTED_BELOW, RedactionUnavailable, Redactor, residual_detail
from models.registry import REGISTRY, ModelRegistry
from sync.events import Priority
from sync.protocol import media_type
from tests.helpers.vision import ListSink, moving_faces, read_jsonl, real_parts

HEIGHTS = [10, 14, 20, 40]
FRAMES = 30
FPS = 10.0


def decode(mp4: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def residuals(originals: list[np.ndarray], decoded: list[np.ndarray], boxes: list[list[Box]]) -> list[float]:
    out = []
    for original, frame, faces in zip(originals, decoded, boxes, strict=True):
        for box in faces:
            x1, y1, x2, y2 = to_pixels(box)
            out.append(residual_detail(original[y1:y2, x1:x2], frame[y1:y2, x1:x2]))
    return out


def pipeline_for(parts: VisionParts, config: VisionConfig, sink: ListSink) -> VisionPipeline:
    # The camera is never started: the test hands its frames to process() itself.
    camera = SimulatedCamera(CameraConfig(name="synthetic", source="simulated"))
    return VisionPipeline(camera, parts, config, PlatePolicy(), sink, ThreadPoolExecutor(1))


async def clip_of(video: list[np.ndarray], parts: VisionParts, config: VisionConfig) -> ListSink:
    sink = ListSink()
    pipeline = pipeline_for(parts, config, sink)
    now = time.time()
    for i, image in enumerate(video):
        await pipeline.process(Frame(image, "synthetic", i, i / FPS, now + i / FPS, i / FPS, i))
        if i == 0:
            assert pipeline.trigger_clip("manual")
    await pipeline.flush()
    return sink


def clip_config() -> VisionConfig:
    clips = ClipConfig(enabled=True, triggers=["manual"], pre_s=0.0, post_s=FRAMES / FPS, fps=30.0, max_width=640)
    return VisionConfig(clips=clips)


def test_every_frame_of_a_clip_is_redacted() -> None:
    video, boxes = moving_faces(HEIGHTS, FRAMES)
    sink = asyncio.run(clip_of(video, real_parts(), clip_config()))
    clips = sink.of("clip")
    assert len(clips) == 1
    clip = clips[0]
    assert clip.priority == Priority.MEDIA and len(clip.media) == 1 and is_mp4(clip.media[0])
    assert clip.data["triggers"][0]["type"] == "manual" and clip.data["codec"] == "h264"
    decoded = decode(clip.media[0])
    assert len(decoded) == clip.data["frames"] == FRAMES
    assert decoded[0].shape == video[0].shape
    scores = residuals(video, decoded, boxes)
    assert len(scores) == FRAMES * len(HEIGHTS)
    worst = max(scores)
    assert worst < REDACTED_BELOW, f"a face kept detail {worst:.2f} in some frame"


def test_the_control_unredacted_clip_fails_the_bar() -> None:
    video, boxes = moving_faces(HEIGHTS, 10)
    i420 = [cv2.cvtColor(f, cv2.COLOR_BGR2YUV_I420) for f in video]
    decoded = decode(encode_mp4(i420, [i / FPS for i in range(len(video))], 28, "veryfast"))
    assert min(residuals(video, decoded, boxes)) > 0.8


class _Faces:
    """A face detector that finds one face on the whole frame of chosen frames only (the rest of the time a
    real model might miss it)."""

    name = "scripted"

    def __init__(self, box: Box, on: set[int]) -> None:
        self.box, self.on, self.calls = box, on, 0

    def detect(self, image: np.ndarray, threshold: float) -> list[Detection]:
        self.calls += 1
        return [Detection("face", 0.9, self.box)] if self.calls - 1 in self.on else []

    def detect_batch(self, images: list[np.ndarray], threshold: float) -> list[list[Detection]]:
        return [[] for _ in images]

    def stats(self) -> None:  # pragma: no cover - not timed here
        return None


class _NoPlates:
    name = "none"

    def find(self, image: np.ndarray, vehicle: Box, threshold: float) -> list[object]:
        return []

    def stats(self) -> None:  # pragma: no cover
        return None


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (120, 160, 3), np.uint8) for _ in range(n)]


def _covered(original: np.ndarray, frame: RedactedFrame, box: Box) -> bool:
    x1, y1, x2, y2 = to_pixels(box)
    return residual_detail(original[y1:y2, x1:x2], frame.image[y1:y2, x1:x2]) < REDACTED_BELOW


def test_a_face_found_later_is_covered_on_the_frames_before_it_within_the_look_ahead() -> None:
    face = (60.0, 40.0, 84.0, 70.0)
    faces = _Faces(face, on={2})  # the whole-frame pass runs on frames 0, 2, 4...; it finds the face on frame 4
    redactor = Redactor(faces, _NoPlates(), None)  # type: ignore[arg-type]
    redactor.config.small_faces.enabled = False
    config = VideoRedactionConfig(whole_frame_every=2, lookahead_frames=4, hold_frames=2)
    video = VideoRedactor(redactor, config)
    frames = _frames(12)
    out: list[RedactedFrame] = []
    for i, image in enumerate(frames):
        out += video.push(image, i / FPS, i / FPS, [], None)
    out += video.flush()
    assert [round(f.t * FPS) for f in out] == list(range(12))
    covered = [i for i, f in enumerate(out) if _covered(frames[i], f, face)]
    # Found on frame 4: covered from 4 - 4 (look-ahead) until the whole-frame pass looked again (frame 6) and
    # the hold of 2 frames had passed.
    assert covered == [0, 1, 2, 3, 4, 5, 6]


def test_the_head_of_every_live_person_track_is_covered_found_face_or_not() -> None:
    redactor = Redactor(_Faces((0, 0, 1, 1), on=set()), _NoPlates(), None)  # type: ignore[arg-type]
    redactor.config.small_faces.enabled = False
    video = VideoRedactor(redactor, VideoRedactionConfig(lookahead_frames=0))
    image = _frames(1)[0]
    person = TrackBox(7, True, (40.0, 20.0, 80.0, 110.0), detected=False)
    (out,) = video.push(image, 0.0, 0.0, [person], None)
    head = (45.0, 22.0, 75.0, 40.0)
    assert _covered(image, out, head)
    feet = (40.0, 90.0, 80.0, 110.0)
    assert not _covered(image, out, feet)


def test_no_clip_is_kept_when_the_face_model_is_missing() -> None:
    parts = real_parts()
    blind = VisionParts(parts.detector, Redactor(None, parts.redactor.plates), None)
    video, _ = moving_faces(HEIGHTS, 12)
    sink = asyncio.run(clip_of(video, blind, clip_config()))
    assert sink.of("clip") == []
    assert all(not e.media for e in sink.events)


def test_the_video_redactor_raises_and_keeps_nothing_when_a_pass_fails() -> None:
    class Broken(_Faces):
        def detect(self, image: np.ndarray, threshold: float) -> list[Detection]:
            raise RuntimeError("onnxruntime fell over")

    video = VideoRedactor(Redactor(Broken((0, 0, 1, 1), set()), _NoPlates(), None), VideoRedactionConfig())  # type: ignore[arg-type]
    with pytest.raises(RedactionUnavailable, match="onnxruntime fell over"):
        video.push(_frames(1)[0], 0.0, 0.0, [], None)
    assert video.pending_bytes == 0 and video.flush() == []


def short_video(path: Path, heights: list[int], frames: int) -> list[np.ndarray]:
    """The moving faces written as a file for replay (a test input, not a camera's frames)."""
    video, _ = moving_faces(heights, frames)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (640, 480))
    for frame in video:
        writer.write(frame)
    writer.release()
    return video


def test_replay_writes_no_clip_without_the_face_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shipped = ModelRegistry()
    for name, spec in REGISTRY.items():
        if not name.startswith("centerface"):
            (models / spec.filename).symlink_to(shipped.path(name))
    config = tmp_path / "pole.toml"
    config.write_text(f'[vision.inference]\nmodels_dir = "{models}"\n[vision.clips]\npre_s = 0.5\npost_s = 0.5\n')
    out = tmp_path / "out"
    short_video(tmp_path / "faces.avi", [14, 40], 20)
    assert replay_main(tmp_path / "faces.avi", out, config, clips=True) == 0
    events = read_jsonl(out / "events.jsonl")
    assert events and [e for e in events if e["type"] == "clip"] == []
    assert list((out / "clips").iterdir()) == []


def test_the_ring_buffer_stays_within_its_bytes_with_a_clip_waiting() -> None:
    config = ClipConfig(enabled=True, pre_s=30.0, post_s=30.0, max_bytes=4 * 2**20, max_width=640)
    recorder = ClipRecorder(config, "c")
    image = np.full((480, 640, 3), 90, np.uint8)
    per_frame = 640 * 480 * 3 // 2
    assert recorder.trigger("manual", 0.0, 0.0)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(300):  # 30 s at 10 fps: far more than 4 MiB
        done = recorder.add(RedactedFrame(i / FPS, i / FPS, image.copy(), 0, 0))
        assert recorder.buffer_bytes <= config.max_bytes
        assert not done
    grown = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert len(recorder.ring) == config.max_bytes // per_frame
    assert recorder.stats().frames_dropped == 300 - len(recorder.ring)
    # The ring, one BGR frame being converted, and bookkeeping: nothing grows with the frames seen.
    assert grown < config.max_bytes + 3 * 640 * 480 * 3
    (clip,) = recorder.finish()
    assert clip.frames[0].t == pytest.approx((300 - len(recorder.ring)) / FPS)


def test_the_uplink_labels_clips_as_mp4() -> None:
    video, _ = moving_faces([20], 3)
    mp4 = encode_mp4([cv2.cvtColor(f, cv2.COLOR_BGR2YUV_I420) for f in video], [0.0, 0.1, 0.2], 30, "ultrafast")
    assert media_type(mp4) == "video/mp4"
    assert media_type(cv2.imencode(".jpg", video[0])[1].tobytes()) == "image/jpeg"


class _Pole:
    """What the status page asks of the daemon, with one clip in memory."""

    pole_id = "pole-1"

    def __init__(self, mp4: bytes) -> None:
        self.mp4 = mp4
        self.asked = 0

    def clip(self, event_id: str) -> bytes | None:
        return self.mp4 if event_id == "e1" else None

    def latest_clip_id(self) -> str | None:
        return "e1"

    def record_clip(self) -> str:
        self.asked += 1
        return "recording a clip on cam0"


async def test_the_status_page_serves_clips_and_takes_the_manual_trigger() -> None:
    video, _ = moving_faces([20], 3)
    mp4 = encode_mp4([cv2.cvtColor(f, cv2.COLOR_BGR2YUV_I420) for f in video], [0.0, 0.1, 0.2], 30, "ultrafast")
    pole = _Pole(mp4)
    app = web.Application()
    StatusPage(pole, WebAuth(None, None, 1.0)).register(app)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/clips/e1.mp4")
        assert resp.status == 200 and resp.content_type == "video/mp4" and await resp.read() == mp4
        assert (await client.get("/clips/nope.mp4")).status == 404
        resp = await client.post("/actions/record-clip")
        assert resp.status == 200 and (await resp.json())["message"].startswith("recording")
    assert pole.asked == 1


def test_replay_cuts_a_video_into_clips(tmp_path: Path) -> None:
    video = short_video(tmp_path / "faces.avi", [14, 40], 20)
    config = tmp_path / "pole.toml"
    config.write_text("[vision.clips]\npre_s = 0.5\npost_s = 0.5\n")
    out = tmp_path / "out"
    assert replay_main(tmp_path / "faces.avi", out, config, clips=True) == 0
    clips = [e for e in read_jsonl(out / "events.jsonl") if e["type"] == "clip"]
    assert len(clips) >= 2
    frames = 0
    for event in clips:
        mp4 = (out / event["clip"]).read_bytes()
        assert is_mp4(mp4) and event["snapshot"] is None and event["priority"] == "media"
        frames += len(decode(mp4))
    assert frames >= len(video)
