"""Cameras on real video: every frame or only the newest, reconnect after the end, clear errors."""

from __future__ import annotations

import asyncio
import functools
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

from hal.camera.base import Camera, CameraConfig, CameraError
from hal.camera.factory import open_camera
from hal.camera.opencv import OpenCVCamera, probe_video
from hal.camera.simulated import SimulatedCamera
from models.simulated import SimulatedObjectDetector
from tests.helpers.vision import CLIP


def short_clip(path: Path, frames: int = 6) -> Path:
    cap = cv2.VideoCapture(str(CLIP))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (384, 288))
    for _ in range(frames):
        ok, frame = cap.read()
        assert ok
        writer.write(cv2.resize(frame, (384, 288)))
    writer.release()
    cap.release()
    return path


async def wait_for_state(camera: Camera, state: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while camera.stats().state != state:
        assert time.monotonic() < deadline, f"camera never {state}: {camera.stats()}"
        await camera.frame(timeout=0.05)


async def test_a_file_at_max_rate_hands_over_every_frame_in_order() -> None:
    camera = OpenCVCamera(CameraConfig(name="c", source=str(CLIP), rate="max", at_end="stop"))
    camera.start()
    frames = []
    while (frame := await camera.frame(timeout=5)) is not None:
        frames.append(frame)
    camera.stop()
    assert camera.finished
    assert [f.position for f in frames] == list(range(120))
    assert [f.seq for f in frames] == list(range(1, 121))
    assert frames[50].t_stream == pytest.approx(5.0)
    assert frames[0].image.shape == (576, 768, 3)
    stats = camera.stats()
    assert stats.frames_read == 120 and stats.frames_dropped == 0


async def test_a_slow_pipeline_gets_the_newest_frame_and_drops_are_counted() -> None:
    camera = OpenCVCamera(CameraConfig(name="c", source=str(CLIP), rate="native", at_end="stop"))
    camera.start()
    taken = []
    for _ in range(5):
        frame = await camera.frame(timeout=2)
        assert frame is not None
        # The frame handed over is the newest one, not one queued behind others.
        assert time.monotonic() - frame.t_monotonic < 0.15
        taken.append(frame.seq)
        await asyncio.sleep(0.35)  # a pipeline slower than the camera's 10 fps
    camera.stop()
    assert camera.stats().frames_dropped >= 8
    assert all(b - a >= 3 for a, b in zip(taken, taken[1:], strict=False))


async def test_the_camera_is_reported_down_and_reopened_after_the_file_ends(tmp_path: Path) -> None:
    clip = short_clip(tmp_path / "short.avi")
    config = CameraConfig(name="c", source=str(clip), rate="native", at_end="reopen", backoff_initial_s=0.2)
    camera = OpenCVCamera(config)
    camera.start()
    await wait_for_state(camera, "up")
    await wait_for_state(camera, "down")
    assert camera.stats().last_error == "stream ended"
    await wait_for_state(camera, "up")
    after = await camera.frame(timeout=2)
    camera.stop()
    assert after is not None and camera.stats().reopens >= 1


@pytest.fixture
def http_video(tmp_path: Path) -> Iterator[str]:
    short_clip(tmp_path / "live.avi", frames=10)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))

    class Quiet(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
            pass  # the camera hanging up mid-file is expected

    server = Quiet(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/live.avi"
    server.shutdown()
    server.server_close()


async def test_a_stream_that_ends_is_reconnected(http_video: str) -> None:
    config = CameraConfig(name="c", source=http_video, backoff_initial_s=0.2, open_timeout_s=3, read_timeout_s=3)
    assert config.resolved_kind() == "stream"
    camera = OpenCVCamera(config)
    camera.start()
    first = await camera.frame(timeout=5)
    assert first is not None and first.position is None
    await wait_for_state(camera, "down")
    await wait_for_state(camera, "up")
    camera.stop()
    assert camera.stats().reopens >= 1


async def test_an_absent_device_is_down_and_retried_with_backoff() -> None:
    camera = OpenCVCamera(CameraConfig(name="c", source="/dev/video97", backoff_initial_s=0.1, backoff_max_s=0.2))
    camera.start()
    await wait_for_state(camera, "down")
    assert await camera.frame(timeout=0.5) is None
    camera.stop()
    stats = camera.stats()
    assert not stats.up and stats.reopens >= 1 and "/dev/video97" in (stats.last_error or "")


def test_a_corrupt_video_is_named_in_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00AVI garbage" * 100)
    with pytest.raises(CameraError, match="junk.avi"):
        probe_video(junk)
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(CLIP.read_bytes()[:3000])
    with pytest.raises(CameraError, match="truncated.avi"):
        probe_video(truncated)
    with pytest.raises(CameraError, match="no such file"):
        probe_video(tmp_path / "absent.avi")
    info = probe_video(CLIP)
    assert (info.width, info.height, info.fps) == (768, 576, 10.0)


async def test_the_simulated_camera_shows_what_the_simulated_detector_finds() -> None:
    camera = open_camera(CameraConfig(name="sim", source="simulated", fps=50))
    assert isinstance(camera, SimulatedCamera)
    camera.start()
    detector = SimulatedObjectDetector()
    labels: set[str] = set()
    for _ in range(250):
        frame = await camera.frame(timeout=1)
        assert frame is not None
        labels |= {d.label for d in detector.detect(frame.image)}
    camera.stop()
    assert labels == {"person", "car"}
