"""A simulated camera: a street of synthetic moving shapes, for development without hardware.

People are green rectangles with a skin-coloured head, vehicles blue boxes
with a white plate; ``models.simulated`` finds them again by colour. The
scene is deterministic (seeded), so a development run is reproducible.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import cv2
import numpy as np

from hal.camera.base import Camera, CameraConfig, CameraStats, Frame

WIDTH, HEIGHT = 640, 480
PERSON_BGR = (40, 160, 40)
HEAD_BGR = (120, 160, 220)
VEHICLE_BGR = (170, 60, 20)
PLATE_BGR = (245, 245, 245)


@dataclass(slots=True)
class _Actor:
    kind: str
    x: float
    y: float
    w: int
    h: int
    vx: float


class SimulatedCamera(Camera):
    """Synthetic frames at ``config.fps`` (10 by default), ``config.width`` x ``config.height``."""

    def __init__(self, config: CameraConfig, seed: int = 7) -> None:
        super().__init__(config)
        self.width = config.width or WIDTH
        self.height = config.height or HEIGHT
        self.fps = config.fps or 10.0
        self._rng = random.Random(seed)
        self._actors: list[_Actor] = []
        self._background = self._street()
        self._seq = 0
        self._started: float | None = None
        self._stopped = False
        self._frames_read = 0
        self._frames_dropped = 0
        self._last_frame: float | None = None

    def _street(self) -> np.ndarray:
        img = np.full((self.height, self.width, 3), (90, 90, 90), np.uint8)
        img[: self.height // 3] = (150, 130, 110)
        cv2.line(img, (0, self.height * 2 // 3), (self.width, self.height * 2 // 3), (200, 200, 200), 2)
        noise = np.random.default_rng(1).integers(0, 12, img.shape, dtype=np.uint8)
        return cv2.add(img, noise)

    def _spawn(self) -> None:
        rng = self._rng
        if rng.random() < 0.6:
            h = rng.randint(self.height // 6, self.height // 3)
            w = h // 3
            y = rng.uniform(self.height * 0.35, self.height - h - 5)
            speed = rng.uniform(2, 6) * self.width / WIDTH
        else:
            h = rng.randint(self.height // 8, self.height // 5)
            w = int(h * 2.2)
            y = rng.uniform(self.height * 0.45, self.height - h - 5)
            speed = rng.uniform(6, 14) * self.width / WIDTH
        kind = "person" if w < h else "car"
        leftwards = rng.random() < 0.5
        x = float(self.width) if leftwards else float(-w)
        self._actors.append(_Actor(kind, x, y, w, h, -speed if leftwards else speed))

    def _render(self) -> np.ndarray:
        if len(self._actors) < 4 and self._rng.random() < 0.08:
            self._spawn()
        img = self._background.copy()
        for a in self._actors:
            a.x += a.vx
            x, y = int(a.x), int(a.y)
            if a.kind == "person":
                head = a.w // 2
                cv2.rectangle(img, (x, y + head), (x + a.w, y + a.h), PERSON_BGR, -1)
                cv2.ellipse(
                    img, (x + a.w // 2, y + head // 2 + 1), (head // 2 + 1, head // 2 + 1), 0, 0, 360, HEAD_BGR, -1
                )
            else:
                cv2.rectangle(img, (x, y), (x + a.w, y + a.h), VEHICLE_BGR, -1)
                pw, ph = a.w // 4, max(6, a.h // 6)
                px, py = x + (a.w - pw) // 2, y + a.h - ph - 3
                cv2.rectangle(img, (px, py), (px + pw, py + ph), PLATE_BGR, -1)
                cv2.putText(img, "SIM42", (px + 2, py + ph - 2), cv2.FONT_HERSHEY_PLAIN, ph / 14, (0, 0, 0), 1)
        self._actors = [a for a in self._actors if -a.w - 5 <= a.x <= self.width + 5]
        return img

    def start(self) -> None:
        self._started = time.monotonic()

    async def frame(self, timeout: float) -> Frame | None:
        if self._stopped or self._started is None:
            return None
        behind = int((time.monotonic() - self._started) * self.fps) - self._seq
        if behind > 0:  # a live camera would have moved on: skip, and count, what the pipeline missed
            self._frames_dropped += behind
            self._seq += behind
        due = self._started + self._seq / self.fps
        wait = due - time.monotonic()
        if wait > timeout:
            await asyncio.sleep(timeout)
            return None
        if wait > 0:
            await asyncio.sleep(wait)
        self._seq += 1
        now = time.monotonic()
        self._frames_read += 1
        self._last_frame = now
        return Frame(self._render(), self.name, self._seq, now, time.time(), now, None)

    def stop(self) -> None:
        self._stopped = True

    @property
    def finished(self) -> bool:
        return False

    def stats(self) -> CameraStats:
        now = time.monotonic()
        up = self._started is not None and not self._stopped
        return CameraStats(
            name=self.name,
            kind="simulated",
            state="up" if up else ("stopped" if self._stopped else "starting"),
            up=up,
            frames_read=self._frames_read,
            frames_dropped=self._frames_dropped,
            last_frame_age_s=None if self._last_frame is None else now - self._last_frame,
            read_fps=self.fps if up else 0.0,
            reopens=0,
            last_error=None,
        )
