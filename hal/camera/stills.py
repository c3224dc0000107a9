"""A folder of still images as a camera, for replaying photos through the pipeline."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import cv2
import structlog

from hal.camera.base import Camera, CameraConfig, CameraStats, Frame

log = structlog.get_logger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})


class StillImages(Camera):
    """Image files as a camera, one frame each in the given order (replay of a folder of photos).

    Files that do not decode are skipped and listed in ``unreadable``. Frames
    are one second apart on the stream clock, and ``position`` is the file's
    index in ``paths``.
    """

    def __init__(self, paths: list[Path], name: str = "replay") -> None:
        super().__init__(CameraConfig(name=name, source="images", kind="file", rate="max", at_end="stop"))
        self.paths = paths
        self.unreadable: list[tuple[Path, str]] = []
        self._next = 0
        self._read = 0

    def start(self) -> None:
        self._next = 0

    async def frame(self, timeout: float) -> Frame | None:
        while self._next < len(self.paths):
            index = self._next
            self._next += 1
            path = self.paths[index]
            image = await asyncio.to_thread(cv2.imread, str(path), cv2.IMREAD_COLOR)
            if image is None:
                reason = "not an image OpenCV can decode (corrupt or unsupported)"
                self.unreadable.append((path, reason))
                log.error("image_unreadable", path=str(path), reason=reason)
                continue
            self._read += 1
            return Frame(image, self.name, index + 1, time.monotonic(), time.time(), float(index), index)
        return None

    def stop(self) -> None:
        self._next = len(self.paths)

    @property
    def finished(self) -> bool:
        return self._next >= len(self.paths)

    def stats(self) -> CameraStats:
        done = self.finished
        return CameraStats(
            name=self.name,
            kind="images",
            state="ended" if done else "up",
            up=not done,
            frames_read=self._read,
            frames_dropped=0,
            last_frame_age_s=None,
            read_fps=0.0,
            reopens=0,
            last_error=None,
        )
