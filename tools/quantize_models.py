"""Make the int8 NanoDet and CenterFace files the pole runs by default (how the shipped files were produced).

Usage: python -m tools.quantize_models [--weights DIR] [--calibration-video PATH]

Static post-training quantisation with onnxruntime's quantiser: weights int8
per output channel, activations uint8 with ranges measured (min/max) on
calibration inputs, QDQ format. CenterFace is quantised whole (with only its
convolutions int8 it is slower than the float model: every layer between two
convolutions converts back and forth); NanoDet only in its convolutions, so
its box decoding (softmax over distance bins, the integral) stays float, and
that is also the faster of the two there. On this machine's CPU (AVX-512
VNNI) the int8 files take 0.6-0.7 of the float ones' time; ``bench/privacy.py``
holds them to the same recall as the float models and
``tests/test_models_int8.py`` to the same detections.

Calibration uses what the models see on a pole and none of the labelled
privacy set: frames of ``tests/data/video/vtest_12s.avi`` (frames 0-119 of
vtest.avi; the labelled frames are 200, 350 and 640) and the vehicle photos,
each as the pipeline feeds it: NanoDet the whole frame at 416x416, CenterFace
the whole frame at 640 px, 2x tiles of the small-face pass and enlarged
motion-blob squares at fixed places. The result is deterministic for one
onnxruntime and onnx version (1.32.0 and 1.23.2 made the shipped files). Needs the ``onnx``
package (``pip install 'smartpole[tools]'``), which the pole itself does not.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import version_converter
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "models" / "weights"
VIDEO = ROOT / "tests" / "data" / "video" / "vtest_12s.avi"
PHOTOS = [
    ROOT / "tests" / "data" / "vehicles" / name
    for name in ("licenseplate_motion.jpg", "person.jpg", "street_00000102.jpg", "voc2011_000025_bus_plate.jpg")
]
# Per-channel weights need DequantizeLinear's axis, from opset 13 (CenterFace's export is opset 9).
_OPSET = 13
# NanoDet: only the convolutions; its box decoding (softmax over distance bins, the integral) stays float.
NANODET_OPS: list[str] | None = ["Conv"]


def calibration_frames(video: Path, every: int = 8) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(video))
    frames: list[np.ndarray] = []
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index % every == 0:
            frames.append(frame)
        index += 1
    capture.release()
    if not frames:
        raise SystemExit(f"no frames in {video}")
    return frames + [cv2.imread(str(p)) for p in PHOTOS]


def _blob(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.dnn.blobFromImages([image], 1.0, (width, height), (0, 0, 0), swapRB=True, crop=False)


def centerface_inputs(frames: list[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    for frame in frames:
        height, width = frame.shape[:2]
        scale = 640 / max(height, width)
        yield {"input.1": _blob(frame, int(width * scale) // 32 * 32, int(height * scale) // 32 * 32)}
        for fx, fy in ((0.2, 0.2), (0.6, 0.4)):
            x, y = int(fx * width), int(fy * height)
            for side, net in ((192, 384), (64, 128), (128, 256)):
                crop = frame[y : y + side, x : x + side]
                if crop.shape[:2] == (side, side):
                    yield {"input.1": _blob(crop, net, net)}


def nanodet_inputs(frames: list[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    for frame in frames:
        yield {"image": cv2.resize(frame, (416, 416), interpolation=cv2.INTER_LINEAR)[None]}


class _Reader(CalibrationDataReader):
    def __init__(self, inputs: Iterator[dict[str, np.ndarray]]) -> None:
        self.inputs = inputs

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.inputs, None)


def quantize(src: Path, dst: Path, inputs: Iterator[dict[str, np.ndarray]], ops: list[str] | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = onnx.load(str(src))
        if max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < _OPSET:
            model = version_converter.convert_version(model, _OPSET)
        upgraded, prepared = Path(tmp) / "upgraded.onnx", Path(tmp) / "prepared.onnx"
        onnx.save(model, str(upgraded))
        quant_pre_process(str(upgraded), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(dst),
            _Reader(inputs),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            op_types_to_quantize=ops,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="where the float models are and the int8 go")
    parser.add_argument("--calibration-video", type=Path, default=VIDEO)
    args = parser.parse_args()
    frames = calibration_frames(args.calibration_video)
    quantize(
        args.weights / "nanodet_coco_416.onnx",
        args.weights / "nanodet_coco_416_int8.onnx",
        nanodet_inputs(frames),
        NANODET_OPS,
    )
    quantize(
        args.weights / "centerface_dynamic.onnx",
        args.weights / "centerface_int8.onnx",
        centerface_inputs(frames),
        None,
    )


if __name__ == "__main__":
    main()
