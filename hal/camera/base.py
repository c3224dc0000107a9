"""The camera interface: its configuration, the frames it yields and the health it reports.

Capture blocks, so every camera reads in its own thread and keeps only the
newest frame: the pipeline always gets the freshest picture and never builds
latency; frames it had no time for are counted as dropped. The one exception
is a video file read with ``rate = "max"`` (replay, benchmarks), where the
reader waits for the pipeline so that every frame is analysed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

CameraKind = Literal["auto", "v4l2", "stream", "file", "simulated"]
CameraState = Literal["starting", "up", "down", "ended", "stopped"]


class CameraConfig(BaseModel):
    """One camera of the pole (TOML: one ``[[cameras]]`` entry)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        "cam0",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$",
        description="Camera name, unique on the pole; in every event.",
    )
    source: str = Field(
        "/dev/video0",
        description="What to read: a V4L2 device ('/dev/video0' or an index '0'), an rtsp:// or http(s):// URL, "
        "a video file path, or 'simulated'.",
    )
    kind: CameraKind = Field(
        "auto", description="'auto' guesses from the source; or force 'v4l2', 'stream', 'file' or 'simulated'."
    )
    width: int | None = Field(
        None, ge=16, description="Capture width requested from a V4L2 device (None: its default)."
    )
    height: int | None = Field(
        None, ge=16, description="Capture height requested from a V4L2 device (None: its default)."
    )
    fps: float | None = Field(
        None, gt=0, description="Frame rate requested from a V4L2 device, or produced by the simulated camera."
    )
    rate: Literal["native", "max"] = Field(
        "native",
        description="Video files: 'native' plays at the file's frame rate like a live camera; 'max' hands every "
        "frame to the pipeline as fast as it takes them (nothing dropped).",
    )
    at_end: Literal["reopen", "loop", "stop"] = Field(
        "reopen",
        description="When a file or stream ends: 'reopen' reports the camera down and reopens it with backoff, "
        "'loop' restarts a file at once, 'stop' ends the camera (replay).",
    )
    open_timeout_s: float = Field(10.0, gt=0, description="Longest wait for a stream to open.")
    read_timeout_s: float = Field(5.0, gt=0, description="A camera with no frame for this long is reported down.")
    backoff_initial_s: float = Field(1.0, gt=0, description="First wait before reopening a failed camera.")
    backoff_max_s: float = Field(30.0, gt=0, description="Longest wait between reopening attempts (doubling up to it).")

    def resolved_kind(self) -> Literal["v4l2", "stream", "file", "simulated"]:
        if self.kind != "auto":
            return self.kind
        source = self.source.strip()
        if source == "simulated":
            return "simulated"
        if source.isdigit() or source.startswith("/dev/video"):
            return "v4l2"
        if "://" in source:
            return "stream"
        return "file"


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured picture.

    ``t_stream`` is the time on the source's own clock: monotonic for live
    sources, the position in the file for files (continuing across loops), so
    replaying a file faster than real time keeps its timing. ``position`` is
    the frame's index in a file, None for live sources.
    """

    image: np.ndarray
    camera: str
    seq: int
    t_monotonic: float
    ts_wall: float
    t_stream: float
    position: int | None = None


@dataclass(frozen=True, slots=True)
class CameraStats:
    """A camera's health for the status page and metrics."""

    name: str
    kind: str
    state: CameraState
    up: bool
    frames_read: int
    frames_dropped: int
    last_frame_age_s: float | None
    read_fps: float
    reopens: int
    last_error: str | None


class CameraError(Exception):
    """A source that cannot be used at all (e.g. a corrupt video file); the message names it."""


class Camera(ABC):
    """A source of frames. ``start`` in the event loop; ``frame`` awaits the next one."""

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self.name = config.name

    @abstractmethod
    def start(self) -> None:
        """Begin capturing; call from the running event loop."""

    @abstractmethod
    async def frame(self, timeout: float) -> Frame | None:
        """The newest frame not yet returned, or None after ``timeout`` seconds or once finished."""

    @abstractmethod
    def stop(self) -> None:
        """Stop capturing and release the device."""

    @property
    @abstractmethod
    def finished(self) -> bool:
        """True once a source with ``at_end = "stop"`` has ended and its last frame was taken."""

    @abstractmethod
    def stats(self) -> CameraStats: ...

    def blocked_since(self) -> float | None:
        """Monotonic time at which the capture thread entered the device call it is still in; None if in none.

        A call that never returns (a wedged V4L2 driver, a stalled stream) cannot be
        interrupted from Python: the daemon's watchdog uses this to let systemd restart us.
        """
        return None
