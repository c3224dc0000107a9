"""The motion gate: background subtraction on a small grey frame decides when and where to detect.

Detection is the expensive step; a street camera sees an empty or unchanged
scene much of the time. The gate runs a MOG2 background model on a frame
about 160 px wide (under a millisecond) and answers whether anything moves
and the region that does, so the detector can look only there: NanoDet's
input is a fixed 416x416, so a small region is also seen larger and small
people are found better.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from gateway.vision.config import MotionConfig
from models.detection import Box


@dataclass(frozen=True, slots=True)
class MotionResult:
    """What moved: ``region`` (where to detect) in full-frame pixels, None when nothing did or it is most of the
    frame; ``blobs``, the box of every moving blob (also those too small to count as motion), in full-frame
    pixels."""

    moving: bool
    fraction: float
    region: Box | None
    blobs: tuple[Box, ...] = ()


def small_grey(image: np.ndarray, width: int) -> np.ndarray:
    """The frame scaled to ``width`` pixels wide, grey, lightly smoothed against sensor noise."""
    height = max(1, int(round(image.shape[0] * width / image.shape[1])))
    small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    if small.ndim == 3:
        small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    return cv2.GaussianBlur(small, (3, 3), 0)


class MotionGate:
    """Keeps the background model of one camera."""

    def __init__(self, config: MotionConfig) -> None:
        self.config = config
        self._model = cv2.createBackgroundSubtractorMOG2(
            history=300, varThreshold=config.sensitivity, detectShadows=False
        )
        self._kernel = np.ones((3, 3), np.uint8)

    def reset(self) -> None:
        self._model = cv2.createBackgroundSubtractorMOG2(
            history=300, varThreshold=self.config.sensitivity, detectShadows=False
        )

    def update(self, grey: np.ndarray, frame_width: int, frame_height: int) -> MotionResult:
        """Feed one small grey frame (from :func:`small_grey`) of a ``frame_width`` x ``frame_height`` frame."""
        raw = self._model.apply(grey)
        mask = cv2.morphologyEx(raw, cv2.MORPH_OPEN, self._kernel)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        min_pixels = max(2.0, self.config.min_area * grey.size)
        blobs = [stats[i] for i in range(1, count) if stats[i][4] >= min_pixels]
        sx, sy = frame_width / grey.shape[1], frame_height / grey.shape[0]
        # Every blob, small ones too, with a pixel of the small frame around it: where small faces may have moved.
        # From the mask before the opening, which erases what is under 3 px here: a 10 px face at 640x480 moving.
        raw_count, _, raw_stats, _ = cv2.connectedComponentsWithStats(raw, connectivity=8)
        boxes = tuple(
            (
                float((b[0] - 1) * sx),
                float((b[1] - 1) * sy),
                float((b[0] + b[2] + 1) * sx),
                float((b[1] + b[3] + 1) * sy),
            )
            for b in raw_stats[1:raw_count]
            if b[4] >= 2
        )
        if not blobs:
            return MotionResult(False, 0.0, None, boxes)
        fraction = float(sum(b[4] for b in blobs)) / grey.size
        x1 = min(b[0] for b in blobs)
        y1 = min(b[1] for b in blobs)
        x2 = max(b[0] + b[2] for b in blobs)
        y2 = max(b[1] + b[3] for b in blobs)
        region = self._detection_region((x1 * sx, y1 * sy, x2 * sx, y2 * sy), frame_width, frame_height)
        return MotionResult(True, fraction, region, boxes)

    def _detection_region(self, moving: Box, width: int, height: int) -> Box | None:
        """The moving box with a margin, made squarish (the detector stretches to a square);
        None for the whole frame."""
        if not self.config.roi:
            return None
        x1, y1, x2, y2 = moving
        w, h = x2 - x1, y2 - y1
        m = self.config.roi_margin
        w, h = w * (1 + 2 * m), h * (1 + 2 * m)
        side_floor = 0.25 * min(width, height)  # never zoom so far that a person fills the net
        w, h = max(w, h / 2, side_floor), max(h, w / 2, side_floor)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        w, h = min(w, width), min(h, height)
        left = min(max(0.0, cx - w / 2), width - w)
        top = min(max(0.0, cy - h / 2), height - h)
        if w * h > self.config.roi_max_fraction * width * height:
            return None
        return (left, top, left + w, top + h)
