"""OpenCV cameras: a V4L2 device, an RTSP/HTTP stream or a video file, read in a thread.

A failing camera (unplugged, stream ended, read timeout) is reported down and
reopened with exponential backoff, forever, without restarting the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import structlog

from hal.camera.base import Camera, CameraConfig, CameraError, CameraState, CameraStats, Frame

log = structlog.get_logger(__name__)

_FALLBACK_FPS = 25.0  # for files whose container does not say


@dataclass(frozen=True, slots=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int


def probe_video(path: Path) -> VideoInfo:
    """Open a video file and decode its first frame; raise :class:`CameraError` saying what is wrong."""
    if not path.is_file():
        raise CameraError(f"{path}: no such file")
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise CameraError(f"{path}: not a video file OpenCV can open (unknown or corrupt container)")
        ok, image = cap.read()
        if not ok or image is None:
            raise CameraError(f"{path}: the video opens but no frame can be decoded (corrupt or unsupported codec)")
        fps = cap.get(cv2.CAP_PROP_FPS)
        return VideoInfo(
            width=image.shape[1],
            height=image.shape[0],
            fps=fps if 0 < fps < 1000 else _FALLBACK_FPS,
            frames=max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))),
        )
    finally:
        cap.release()


class _Rate:
    """Frames per second over the last few seconds."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: list[float] = []

    def tick(self, now: float) -> None:
        self._times.append(now)
        cut = now - self.window_s
        if self._times[0] < cut:
            self._times = [t for t in self._times if t >= cut]

    def rate(self, now: float) -> float:
        recent = [t for t in self._times if t >= now - self.window_s]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)


class OpenCVCamera(Camera):
    """A V4L2 device, an RTSP/HTTP stream or a video file, read by OpenCV in a thread."""

    def __init__(self, config: CameraConfig) -> None:
        super().__init__(config)
        kind = config.resolved_kind()
        if kind == "simulated":
            raise ValueError("use SimulatedCamera for a simulated source")
        self.kind = kind
        self._lock = threading.Lock()
        self._consumed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._latest: Frame | None = None
        self._seq = 0
        self._state: CameraState = "starting"
        self._finished = False
        self._frames_read = 0
        self._frames_dropped = 0
        self._reopens = 0
        self._last_error: str | None = None
        self._last_frame_mono: float | None = None
        self._rate = _Rate()
        self._stream_offset = 0.0
        self._wall_origin: float | None = None
        self._blocked_since: float | None = None

    # ------------------------------------------------------------------ consumer side

    def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()

    async def frame(self, timeout: float) -> Frame | None:
        assert self._wakeup is not None and self._loop is not None, "start() the camera first"
        deadline = self._loop.time() + timeout
        while True:
            with self._lock:
                latest = self._latest
                if latest is not None:
                    self._latest = None
                    self._consumed.notify_all()
                    return latest
                if self._finished:
                    return None
                # Cleared under the lock: a frame stored after this schedules a set() that runs after us.
                self._wakeup.clear()
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return None
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that lands just as the frame arrives, and the pipeline would not stop.
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return None

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            self._consumed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(self.config.open_timeout_s, self.config.read_timeout_s) + 1)
            self._thread = None
        self._state = "stopped"

    @property
    def finished(self) -> bool:
        with self._lock:
            return self._finished and self._latest is None

    def blocked_since(self) -> float | None:
        return self._blocked_since

    def stats(self) -> CameraStats:
        now = time.monotonic()
        with self._lock:
            age = None if self._last_frame_mono is None else now - self._last_frame_mono
            state = self._state
            stale = state == "up" and age is not None and age > self.config.read_timeout_s and self.config.rate != "max"
            return CameraStats(
                name=self.name,
                kind=self.kind,
                state="down" if stale else state,
                up=state == "up" and not stale,
                frames_read=self._frames_read,
                frames_dropped=self._frames_dropped,
                last_frame_age_s=age,
                read_fps=self._rate.rate(now),
                reopens=self._reopens,
                last_error="no frame within read_timeout_s" if stale else self._last_error,
            )

    # ------------------------------------------------------------------ reader thread

    def _open(self) -> cv2.VideoCapture:
        source = self.config.source
        if self.kind == "v4l2":
            index: int | str = int(source) if source.isdigit() else source
            cap = cv2.VideoCapture(index, cv2.CAP_V4L2)
            if cap.isOpened():
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's queue would add latency
                if self.config.width:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
                if self.config.height:
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
                if self.config.fps:
                    cap.set(cv2.CAP_PROP_FPS, self.config.fps)
        elif self.kind == "stream":
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                int(self.config.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                int(self.config.read_timeout_s * 1000),
            ]
            cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)
        else:
            if not Path(source).is_file():
                raise CameraError(f"video file {source} does not exist")
            cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"cannot open {self.kind} source {source}")
        return cap

    def _run(self) -> None:
        backoff = self.config.backoff_initial_s
        first = True
        while not self._stopping.is_set():
            if not first:
                with self._lock:
                    self._reopens += 1
            first = False
            self._blocked_since = time.monotonic()
            try:
                cap = self._open()
            except (CameraError, cv2.error) as exc:
                self._blocked_since = None
                self._down(str(exc))
                if self._stopping.wait(backoff):
                    break
                backoff = min(backoff * 2, self.config.backoff_max_s)
                continue
            self._blocked_since = None
            try:
                outcome, frames = self._read_all(cap)
            finally:
                cap.release()
            if frames:
                backoff = self.config.backoff_initial_s
            if outcome == "stopped":
                break
            if outcome == "ended" and self.kind == "file" and self.config.at_end == "loop":
                continue
            if outcome == "ended" and self.config.at_end == "stop":
                with self._lock:
                    self._finished = True
                    self._state = "ended"
                self._notify()
                log.info("camera_ended", camera=self.name, source=self.config.source, frames=self._frames_read)
                return
            self._down("stream ended" if outcome == "ended" else "read failed")
            if self._stopping.wait(backoff):
                break
            backoff = min(backoff * 2, self.config.backoff_max_s)

    def _read_all(self, cap: cv2.VideoCapture) -> tuple[Literal["ended", "failed", "stopped"], int]:
        is_file = self.kind == "file"
        fps = cap.get(cv2.CAP_PROP_FPS) if is_file else 0.0
        fps = fps if 0 < fps < 1000 else _FALLBACK_FPS
        paced = is_file and self.config.rate == "native"
        lossless = is_file and self.config.rate == "max"
        opened = time.monotonic()
        if self._wall_origin is None:
            self._wall_origin = time.time()
        count = 0
        while not self._stopping.is_set():
            self._blocked_since = time.monotonic()
            ok, image = cap.read()
            self._blocked_since = None
            if not ok or image is None:
                if is_file:
                    self._stream_offset += count / fps
                    return ("ended" if count else "failed"), count
                return "failed", count
            if paced:
                delay = opened + count / fps - time.monotonic()
                if delay > 0 and self._stopping.wait(delay):
                    return "stopped", count
            if image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            now = time.monotonic()
            if is_file:
                t_stream = self._stream_offset + count / fps
                ts_wall = self._wall_origin + t_stream
            else:
                t_stream, ts_wall = now, time.time()
            with self._lock:
                if lossless:
                    while self._latest is not None and not self._stopping.is_set():
                        self._consumed.wait(0.5)
                    if self._stopping.is_set():
                        return "stopped", count
                if self._state != "up":
                    log.info("camera_up", camera=self.name, source=self.config.source)
                self._state = "up"
                self._last_error = None
                self._seq += 1
                if self._latest is not None:
                    self._frames_dropped += 1
                self._latest = Frame(image, self.name, self._seq, now, ts_wall, t_stream, count if is_file else None)
                self._frames_read += 1
                self._last_frame_mono = now
                self._rate.tick(now)
            self._notify()
            count += 1
        return "stopped", count

    def _down(self, error: str) -> None:
        with self._lock:
            was = self._state
            self._state = "down"
            self._last_error = error
        if was != "down":
            log.warning("camera_down", camera=self.name, source=self.config.source, error=error)

    def _notify(self) -> None:
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed while we were reading
                loop.call_soon_threadsafe(wakeup.set)
