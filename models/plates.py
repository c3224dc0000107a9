"""Plate candidates inside vehicle boxes: PP-OCRv4 text detection, then plate geometry.

The text detector (a DB segmentation net) marks every line of text in the
vehicle crop; a candidate is a text region shaped like a plate (wider than
tall, not a large share of the vehicle). Every candidate is redacted in
snapshots, whether or not it is later read, so geometry errs on the side of
keeping too many.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from models.detection import Box, expand, to_pixels
from models.runtime import InferenceCallback, ModelStats, OnnxModel

Quad = tuple[tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float]]

_UNCLIP_RATIO = 1.6  # PP-OCR's own: the net marks a shrunk text kernel, grown back by this
_BINARY_THRESHOLD = 0.3  # pixel probability that counts as text, as in PP-OCR
_MAX_UPSCALE = 2.0  # a plate that needs more enlargement than this to be found has no legible characters


@dataclass(frozen=True, slots=True)
class PlateCandidate:
    """A region that may hold a plate: its corners (clockwise from top-left) and bounds, in image pixels."""

    quad: Quad
    box: Box
    score: float


class PlateFinder(Protocol):
    """Finds plate candidates inside one vehicle box of an image, scoring at least ``threshold``."""

    name: str

    def find(self, image: np.ndarray, vehicle: Box, threshold: float) -> list[PlateCandidate]: ...

    def stats(self) -> ModelStats: ...


def order_corners(points: np.ndarray) -> np.ndarray:
    """Four points as top-left, top-right, bottom-right, bottom-left."""
    by_x = points[np.argsort(points[:, 0])]
    left = by_x[:2][np.argsort(by_x[:2, 1])]
    right = by_x[2:][np.argsort(by_x[2:, 1])]
    return np.array([left[0], right[0], right[1], left[1]], np.float32)


def plate_shaped(width: float, height: float, vehicle_width: float, vehicle_height: float) -> bool:
    """Could a text region of this size be a plate on a vehicle of that size?

    Plates run from nearly square (two-line motorcycle plates) to about 5:1
    (EU); text detection often joins a plate with its frame, hence up to 9:1.
    """
    if height <= 0 or width <= 0:
        return False
    return 1.1 <= width / height <= 9.0 and height <= 0.35 * vehicle_height and width <= 0.9 * vehicle_width


class PaddleTextPlateFinder:
    """A :class:`PlateFinder` on the PP-OCRv4 text detector.

    The vehicle crop is scaled so its longer side is ``side`` pixels, but
    enlarged at most twice: a far-away vehicle costs little, and a plate
    that small has no legible characters to hide.
    """

    name = "ppocr_det"

    def __init__(
        self, model: Path, threads: int, side: int = 416, on_inference: InferenceCallback | None = None
    ) -> None:
        self.model = OnnxModel(self.name, model, threads, on_inference, fixed_shapes=False)
        self.side = side

    def find(self, image: np.ndarray, vehicle: Box, threshold: float) -> list[PlateCandidate]:
        height, width = image.shape[:2]
        x1, y1, x2, y2 = to_pixels(expand(vehicle, 0.05, width, height))
        crop = image[y1:y2, x1:x2]
        if crop.shape[0] < 8 or crop.shape[1] < 8:
            return []
        if crop.ndim == 2:
            crop = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
        crop_h, crop_w = crop.shape[:2]
        scale = min(self.side / max(crop_h, crop_w), _MAX_UPSCALE)
        net_w = max(32, int(round(crop_w * scale / 32)) * 32)
        net_h = max(32, int(round(crop_h * scale / 32)) * 32)
        blob = cv2.dnn.blobFromImage(crop, 2 / 255, (net_w, net_h), (127.5, 127.5, 127.5), swapRB=False)
        (prob,) = self.model.run(blob)
        prob = prob[0, 0]
        mask = cv2.dilate((prob > _BINARY_THRESHOLD).astype(np.uint8), np.ones((2, 2), np.uint8))
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        sx, sy = crop_w / net_w, crop_h / net_h
        found: list[PlateCandidate] = []
        for contour in contours:
            (cx, cy), (rw, rh), angle = cv2.minAreaRect(contour)
            if min(rw, rh) < 3:
                continue
            region = np.zeros_like(mask)
            cv2.drawContours(region, [contour], -1, 1, thickness=-1)
            score = float(cv2.mean(prob, region)[0])
            if score < threshold:
                continue
            grow = rw * rh * _UNCLIP_RATIO / (2 * (rw + rh))
            corners = cv2.boxPoints(((cx, cy), (rw + 2 * grow, rh + 2 * grow), angle))
            corners = order_corners(corners * [sx, sy] + [x1, y1])
            top_w = float(np.linalg.norm(corners[1] - corners[0]))
            side_h = float(np.linalg.norm(corners[3] - corners[0]))
            if not plate_shaped(top_w, side_h, x2 - x1, y2 - y1):
                continue
            lo, hi = corners.min(axis=0), corners.max(axis=0)
            box = (
                float(max(0.0, lo[0])),
                float(max(0.0, lo[1])),
                float(min(width, hi[0])),
                float(min(height, hi[1])),
            )
            quad: Quad = tuple((float(x), float(y)) for x, y in corners)  # type: ignore[assignment]
            found.append(PlateCandidate(quad, box, score))
        return sorted(found, key=lambda c: -c.score)

    def stats(self) -> ModelStats:
        return self.model.timer.stats()
