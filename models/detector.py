"""People and vehicles with NanoDet (COCO), through onnxruntime.

The shipped graph takes a uint8 BGR frame plainly resized to 416x416 (the
MANIFEST found stretching better than letterboxing for this model) and returns
decoded boxes and per-class sigmoid scores; suppression is ours.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from models.detection import PEOPLE, VEHICLES, Detection, nms
from models.runtime import InferenceCallback, ModelStats, OnnxModel

INPUT_SIZE = 416
COCO_IDS = {"person": 0, "bicycle": 1, "car": 2, "motorcycle": 3, "bus": 5, "truck": 7}


class NanoDetDetector:
    """An :class:`~models.detection.ObjectDetector` for people and vehicles.

    Vehicle classes are suppressed together: the model often scores one vehicle
    as both bus and truck, and a pole should count it once.
    """

    name = "nanodet"

    def __init__(
        self,
        model: Path,
        threads: int,
        threshold: float = 0.35,
        nms_iou: float = 0.5,
        labels: tuple[str, ...] = PEOPLE + VEHICLES,
        on_inference: InferenceCallback | None = None,
    ) -> None:
        unknown = set(labels) - set(COCO_IDS)
        if unknown:
            raise ValueError(f"NanoDet has no class {sorted(unknown)}; it knows {sorted(COCO_IDS)}")
        self.model = OnnxModel(self.name, model, threads, on_inference)
        self.threshold = threshold
        self.nms_iou = nms_iou
        self.labels = labels
        self._ids = np.array([COCO_IDS[label] for label in labels])

    def detect(self, image: np.ndarray) -> list[Detection]:
        height, width = image.shape[:2]
        blob = cv2.resize(image, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)[np.newaxis]
        boxes, scores = self.model.run(blob)
        boxes, scores = boxes[0], scores[0][:, self._ids]
        best = scores.argmax(axis=1)
        best_score = scores[np.arange(len(best)), best]
        keep = best_score >= self.threshold
        sx, sy = width / INPUT_SIZE, height / INPUT_SIZE
        found: dict[bool, list[Detection]] = {True: [], False: []}
        for (x1, y1, x2, y2), cls, score in zip(boxes[keep], best[keep], best_score[keep], strict=True):
            box = (
                float(max(0.0, x1 * sx)),
                float(max(0.0, y1 * sy)),
                float(min(width, x2 * sx)),
                float(min(height, y2 * sy)),
            )
            if box[2] > box[0] and box[3] > box[1]:
                label = self.labels[int(cls)]
                found[label in PEOPLE].append(Detection(label, float(score), box))
        return nms(found[True], self.nms_iou) + nms(found[False], self.nms_iou)

    def stats(self) -> ModelStats:
        return self.model.timer.stats()
