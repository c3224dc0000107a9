"""The shipped models on the real media: registry checks, people and vehicles, faces, plates."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.vision.config import PlateReadingConfig
from gateway.vision.plates import PlateReader
from models.detection import PEOPLE, VEHICLES, iou
from models.ocr import PaddleRecogniser, TesseractRecogniser
from models.redact import RedactionConfig
from models.registry import REGISTRY, ModelError, ModelRegistry
from tests.helpers.vision import (
    BUS,
    BUS_PLATE,
    FACE_COUNTS,
    FACES,
    empty_street,
    image,
    real_parts,
)
from tests.helpers.vision import (
    VEHICLES as VEHICLE_DIR,
)


def test_every_registered_model_ships_with_its_pinned_hash_and_licence() -> None:
    registry = ModelRegistry()
    for name, spec in REGISTRY.items():
        path = registry.verified_path(name)
        assert path.stat().st_size == spec.size
        for licence in spec.licence_files:
            assert (path.parent.parent / licence).is_file(), licence
    assert (registry.directory.parent / "PROVENANCE.md").is_file()


def test_a_missing_model_names_the_file_and_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        ModelRegistry(tmp_path).verified_path("centerface")
    message = str(err.value)
    assert "centerface_dynamic.onnx" in message and "missing" in message and "git checkout" in message


def test_a_changed_model_file_is_refused(tmp_path: Path) -> None:
    shutil.copy(ModelRegistry().path("ppocr_det"), tmp_path)
    target = tmp_path / REGISTRY["ppocr_det"].filename
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="not the pinned ch_PP-OCRv4_det_infer.onnx"):
        ModelRegistry(tmp_path).verified_path("ppocr_det")


@pytest.mark.parametrize("name", ["street_00000100.jpg", "street_00000102.jpg"])
def test_people_and_vehicles_on_the_street_frames(name: str) -> None:
    found = real_parts().detector.detect(image(VEHICLE_DIR / name))
    labels = [d.label for d in found]
    assert any(label in PEOPLE for label in labels), labels
    vehicles = [d for d in found if d.label in VEHICLES]
    # The white truck crossing the frame (labelme box around x 600-990, y 190-390).
    assert any(iou(d.box, (600, 190, 990, 390)) > 0.5 for d in vehicles), vehicles
    assert any(d.box[0] > 880 for d in vehicles), "the white car at the right edge"


def test_the_bus_photo_has_buses_and_no_duplicate_truck() -> None:
    found = real_parts().detector.detect(image(BUS))
    front = [d for d in found if iou(d.box, (3, 17, 427, 370)) > 0.7]
    assert len(front) == 1 and front[0].label == "bus", found


@pytest.mark.parametrize(("name", "faces"), sorted(FACE_COUNTS.items()))
def test_faces_counted_as_the_manifest_lists(name: str, faces: int) -> None:
    face_detector = real_parts().redactor.faces
    assert face_detector is not None
    assert len(face_detector.detect(image(FACES / name), 0.5)) == faces


def test_nothing_on_an_empty_street() -> None:
    # The clip's lower half, where nobody stands still: its median over time is the bare street.
    street = empty_street()[288:]
    parts = real_parts()
    assert parts.detector.detect(street) == []
    assert parts.redactor.faces is not None and parts.redactor.faces.detect(street, 0.5) == []


def test_the_bus_plate_is_found_among_the_candidates() -> None:
    finder = real_parts().redactor.plates
    assert finder is not None
    candidates = finder.find(image(BUS), (4.9, 17.2, 427.9, 370.8), 0.5)
    assert any(iou(c.box, BUS_PLATE) > 0.5 for c in candidates), candidates


@pytest.mark.parametrize("recogniser", ["tesseract", "ppocr"])
def test_each_recogniser_reads_the_bus_plate(recogniser: str) -> None:
    parts = real_parts()
    assert parts.redactor.plates is not None
    engine = (
        TesseractRecogniser()
        if recogniser == "tesseract"
        else PaddleRecogniser(ModelRegistry().verified_path("ppocr_rec"), 2)
    )
    reader = PlateReader(parts.redactor.plates, [engine], PlateReadingConfig(), RedactionConfig())
    read = reader.read(image(BUS), (4.9, 17.2, 427.9, 370.8))
    assert read is not None and read.text == "EBY584"
    assert iou(read.candidate.box, BUS_PLATE) > 0.5
    assert "EBY" not in repr(read)


def test_the_motion_blurred_plate_is_not_read() -> None:
    reader = real_parts().plate_reader
    assert reader is not None
    img = image(VEHICLE_DIR / "licenseplate_motion.jpg")
    assert reader.read(img, (0.0, 0.0, float(img.shape[1]), float(img.shape[0]))) is None
