"""Simulated detectors for the simulated camera's synthetic street (``hal.camera.simulated``).

They find its shapes by colour: green bodies are people, saturated blue boxes
vehicles, the skin-toned disc above a body a face, the white patch low on a
vehicle its plate. They let the whole pipeline run on a development machine
without model files, and make no claim about real images.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from models.detection import Box, Detection, expand, to_pixels
from models.plates import PlateCandidate
from models.runtime import InferenceTimer, ModelStats


def _blobs(mask: np.ndarray, min_area: int) -> list[tuple[int, int, int, int]]:
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, a in stats[1:count] if a >= min_area]


class SimulatedObjectDetector:
    """People and cars of the synthetic street."""

    name = "simulated-objects"

    def __init__(self) -> None:
        self.timer = InferenceTimer(self.name)

    def detect(self, image: np.ndarray) -> list[Detection]:
        b, g, r = (image[..., i].astype(np.int16) for i in range(3))
        people = (g > r + 60) & (g > b + 60)
        cars = (b > r + 80) & (b > g + 60)
        found = [
            Detection("person", 0.9, (float(x1), float(max(0, y1 - (x2 - x1) // 2)), float(x2), float(y2)))
            for x1, y1, x2, y2 in _blobs(people, 60)
        ]
        found += [
            Detection("car", 0.9, (float(x1), float(y1), float(x2), float(y2))) for x1, y1, x2, y2 in _blobs(cars, 200)
        ]
        self.timer.record(0.0)
        return found

    def stats(self) -> ModelStats:
        return self.timer.stats()


class SimulatedFaceDetector:
    """The skin-coloured heads of the synthetic people."""

    name = "simulated-faces"

    def __init__(self) -> None:
        self.timer = InferenceTimer(self.name)

    def detect(self, image: np.ndarray, threshold: float) -> list[Detection]:
        b, g, r = (image[..., i].astype(np.int16) for i in range(3))
        skin = (r > b + 60) & (g > b + 20) & (r > 150)
        self.timer.record(0.0)
        return [
            Detection("face", 0.9, (float(x1), float(y1), float(x2), float(y2))) for x1, y1, x2, y2 in _blobs(skin, 12)
        ]

    def detect_batch(self, images: Sequence[np.ndarray], threshold: float) -> list[list[Detection]]:
        return [self.detect(i, threshold) for i in images]

    def stats(self) -> ModelStats:
        return self.timer.stats()


class SimulatedPlateFinder:
    """The white plate patches of the synthetic vehicles."""

    name = "simulated-plates"

    def __init__(self) -> None:
        self.timer = InferenceTimer(self.name)

    def find(self, image: np.ndarray, vehicle: Box, threshold: float) -> list[PlateCandidate]:
        height, width = image.shape[:2]
        x1, y1, x2, y2 = to_pixels(expand(vehicle, 0.05, width, height))
        crop = image[y1:y2, x1:x2]
        white = (crop.min(axis=2) > 200) if crop.ndim == 3 else crop > 200
        closed = cv2.morphologyEx(white.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
        self.timer.record(0.0)
        found = []
        for bx1, by1, bx2, by2 in _blobs(closed, 20):
            box = (float(bx1 + x1), float(by1 + y1), float(bx2 + x1), float(by2 + y1))
            quad = ((box[0], box[1]), (box[2], box[1]), (box[2], box[3]), (box[0], box[3]))
            found.append(PlateCandidate(quad, box, 0.9))
        return found

    def stats(self) -> ModelStats:
        return self.timer.stats()
