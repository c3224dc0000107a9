"""The int8 models the pole runs by default find what the float originals find.

``tools/quantize_models.py`` made them; ``bench/privacy.py`` measures their
recall on the labelled set. Here every confident detection of one model
(score 0.5 and up) must be found by the other at its working threshold, with
an IoU of at least 0.5, on real frames and photos none of which calibrated
them (the labelled privacy set) and on the calibration video's own frames.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models.detection import Detection, iou
from models.detector import NanoDetDetector
from models.faces import CenterFaceDetector
from models.registry import ModelRegistry

DATA = Path(__file__).parent / "data"
CONFIDENT = 0.5


def _missing(a: list[Detection], b: list[Detection]) -> list[Detection]:
    """Confident detections of ``a`` that ``b`` does not have."""
    return [d for d in a if d.score >= CONFIDENT and not any(iou(d.box, e.box) >= 0.5 for e in b)]


def _frames() -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(DATA / "video" / "vtest_12s.avi"))
    frames = []
    for index in range(120):
        ok, frame = capture.read()
        if not ok:
            break
        if index % 15 == 7:
            frames.append(frame)
    capture.release()
    assert len(frames) == 8
    return frames


def _photos(folder: str) -> list[np.ndarray]:
    images = [cv2.imread(str(p)) for p in sorted((DATA / folder).glob("*.[jp][pn]g"))]
    assert images and all(i is not None for i in images)
    return images


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry()


def test_int8_nanodet_finds_the_people_and_vehicles_the_float_model_finds(registry: ModelRegistry) -> None:
    labels = ("person", "car", "bus", "truck", "bicycle", "motorcycle")
    fp32 = NanoDetDetector(registry.verified_path("nanodet"), 2, threshold=0.35, labels=labels)
    int8 = NanoDetDetector(registry.verified_path("nanodet_int8"), 2, threshold=0.35, labels=labels)
    confident = 0
    for image in _frames() + _photos("vehicles"):
        a, b = fp32.detect(image), int8.detect(image)
        confident += sum(d.score >= CONFIDENT for d in a)
        assert _missing(a, b) == [] and _missing(b, a) == []
    assert confident >= 20


def test_int8_centerface_finds_the_faces_the_float_model_finds(registry: ModelRegistry) -> None:
    fp32 = CenterFaceDetector(registry.verified_path("centerface"), 2)
    int8 = CenterFaceDetector(registry.verified_path("centerface_int8"), 2)
    images = _photos("faces") + [cv2.imread(str(p)) for p in sorted((DATA / "privacy").glob("composite_*.jpg"))]
    confident = 0
    for image in images:
        a, b = fp32.detect(image, 0.4), int8.detect(image, 0.4)
        confident += sum(d.score >= CONFIDENT for d in a)
        assert _missing(a, b) == [] and _missing(b, a) == []
        # Enlarged 128 px squares, as the small-face and motion passes feed it.
        height, width = image.shape[:2]
        crops = [
            cv2.resize(image[y : y + 64, x : x + 64], (128, 128))
            for y in range(0, height - 64, 96)
            for x in range(0, width - 64, 96)
        ]
        for a, b in zip(fp32.detect_batch(crops, 0.4), int8.detect_batch(crops, 0.4), strict=True):
            assert _missing(a, b) == [] and _missing(b, a) == []
    assert confident >= 15
