"""What detectors return, the interfaces they implement, and box arithmetic.

Boxes are ``(x1, y1, x2, y2)`` in pixels of the image given to the detector,
x to the right and y down, ``x2 > x1`` and ``y2 > y1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from models.runtime import ModelStats

Box = tuple[float, float, float, float]

PEOPLE = ("person",)
VEHICLES = ("bicycle", "car", "motorcycle", "bus", "truck")


@dataclass(frozen=True, slots=True)
class Detection:
    """One object found in an image."""

    label: str
    score: float
    box: Box


class ObjectDetector(Protocol):
    """Finds people and vehicles (labels in :data:`PEOPLE` and :data:`VEHICLES`)."""

    name: str

    def detect(self, image: np.ndarray) -> list[Detection]: ...

    def stats(self) -> ModelStats: ...


class FaceDetector(Protocol):
    """Finds faces (label ``"face"``) scoring at least ``threshold``."""

    name: str

    def detect(self, image: np.ndarray, threshold: float) -> list[Detection]: ...

    def detect_batch(self, images: Sequence[np.ndarray], threshold: float) -> list[list[Detection]]:
        """Faces in each of ``images`` (all of one size, not scaled down), in one inference where possible."""
        ...

    def stats(self) -> ModelStats: ...


def area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def intersection(a: Box, b: Box) -> float:
    return area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def iou(a: Box, b: Box) -> float:
    inter = intersection(a, b)
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def covered_fraction(box: Box, by: Sequence[Box]) -> float:
    """How much of ``box`` lies under the union of ``by``, measured on a small raster."""
    if area(box) <= 0:
        return 1.0
    if not by:
        return 0.0
    grid = 32
    x1, y1, x2, y2 = box
    sx, sy = grid / (x2 - x1), grid / (y2 - y1)
    mask = np.zeros((grid, grid), np.uint8)
    for b in by:
        bx1, by1 = int(np.floor((b[0] - x1) * sx)), int(np.floor((b[1] - y1) * sy))
        bx2, by2 = int(np.ceil((b[2] - x1) * sx)), int(np.ceil((b[3] - y1) * sy))
        if bx2 > 0 and by2 > 0 and bx1 < grid and by1 < grid:
            mask[max(0, by1) : max(0, by2), max(0, bx1) : max(0, bx2)] = 1
    return float(mask.mean())


def expand(box: Box, margin: float, width: int, height: int) -> Box:
    """``box`` grown by ``margin`` of its size on every side, clipped to the image."""
    dx, dy = (box[2] - box[0]) * margin, (box[3] - box[1]) * margin
    return clip((box[0] - dx, box[1] - dy, box[2] + dx, box[3] + dy), width, height)


def clip(box: Box, width: int, height: int) -> Box:
    return (
        min(max(box[0], 0.0), float(width)),
        min(max(box[1], 0.0), float(height)),
        min(max(box[2], 0.0), float(width)),
        min(max(box[3], 0.0), float(height)),
    )


def to_pixels(box: Box) -> tuple[int, int, int, int]:
    """Integer bounds that contain ``box`` (never shrink a region to redact)."""
    return int(np.floor(box[0])), int(np.floor(box[1])), int(np.ceil(box[2])), int(np.ceil(box[3]))


def offset(box: Box, dx: float, dy: float, scale: float = 1.0) -> Box:
    """A box from a crop's (possibly scaled) pixels back into the full image."""
    return (box[0] / scale + dx, box[1] / scale + dy, box[2] / scale + dx, box[3] / scale + dy)


def nms(detections: Sequence[Detection], iou_threshold: float) -> list[Detection]:
    """Greedy non-maximum suppression over all given detections, best first."""
    if not detections:
        return []
    rects = [[d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1]] for d in detections]
    keep = cv2.dnn.NMSBoxes(rects, [d.score for d in detections], 0.0, iou_threshold)
    return sorted((detections[int(i)] for i in np.asarray(keep).reshape(-1)), key=lambda d: -d.score)
