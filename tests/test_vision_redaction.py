"""Redaction on the real photos: no identifiable detail left where faces and plates were, fail closed.

The criterion is :func:`models.redact.residual_detail`: the correlation of
fine (band-passed) detail between the original region and the same region of
the redacted, JPEG-encoded snapshot. Below ``REDACTED_BELOW`` (0.3) counts as
redacted; the controls below show that an untouched JPEG and a light blur
score far above it, so the test can fail.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.replay import replay_main
from gateway.vision.config import SnapshotConfig
from gateway.vision.snapshots import SnapshotMaker
from models.detection import PEOPLE, Box, covered_fraction, expand, iou, to_pixels
from models.redact import REDACTED_BELOW, Find, RedactionConfig, Redactor, cover, merge_overlapping, residual_detail
from models.registry import REGISTRY, ModelRegistry
from tests.helpers.vision import BUS, BUS_PLATE, FACE_COUNTS, FACES, PRIVACY, image, read_jsonl, real_parts


def snapshot_of(img: np.ndarray) -> np.ndarray:
    """The pipeline's snapshot of ``img`` (detector boxes, redaction, JPEG), decoded again."""
    parts = real_parts()
    found = parts.detector.detect(img)
    maker = SnapshotMaker(parts.redactor, SnapshotConfig(max_width=None))
    people = [d.box for d in found if d.label in PEOPLE]
    vehicles = [d.box for d in found if d.label not in PEOPLE]
    shot = maker.make(img, people, vehicles, 0.0, "test")
    assert shot is not None
    decoded = cv2.imdecode(np.frombuffer(shot.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == img.shape
    return decoded


def region(img: np.ndarray, box: Box) -> np.ndarray:
    x1, y1, x2, y2 = to_pixels(box)
    return img[y1:y2, x1:x2]


def faces_in(img: np.ndarray) -> list[Box]:
    detector = real_parts().redactor.faces
    assert detector is not None
    return [d.box for d in detector.detect(img, 0.5)]


@pytest.mark.parametrize("name", sorted(FACE_COUNTS))
def test_every_face_keeps_no_identifiable_detail(name: str) -> None:
    original = image(FACES / name)
    faces = faces_in(original)
    assert len(faces) == FACE_COUNTS[name]  # every face of the MANIFEST is measured
    redacted = snapshot_of(original)
    for box in faces:
        assert residual_detail(region(original, box), region(redacted, box)) < REDACTED_BELOW, box


def test_the_bus_plate_keeps_no_legible_detail() -> None:
    original = image(BUS)
    redacted = snapshot_of(original)
    assert residual_detail(region(original, BUS_PLATE), region(redacted, BUS_PLATE)) < REDACTED_BELOW


@pytest.mark.parametrize("name", ["astronaut.png", "voc2011_000003.jpg"])
def test_the_criterion_tells_a_light_blur_from_a_redaction(name: str) -> None:
    original = image(FACES / name)
    jpeg = cv2.imdecode(cv2.imencode(".jpg", original, [cv2.IMWRITE_JPEG_QUALITY, 80])[1], cv2.IMREAD_COLOR)
    for box in faces_in(original):
        face = region(original, box)
        light = cv2.GaussianBlur(face, (0, 0), face.shape[0] / 40)
        assert residual_detail(face, region(jpeg, box)) > 0.9
        assert residual_detail(face, light) > 0.6


@pytest.mark.parametrize("method", ["pixelate", "blur", "fill"])
@pytest.mark.parametrize("blocks", [6, 8])
def test_every_method_redacts(method: str, blocks: int) -> None:
    original = image(FACES / "basketball1.png")
    height, width = original.shape[:2]
    for box in faces_in(original):
        out = original.copy()
        cover(out, expand(box, 0.25, width, height), method, blocks)  # type: ignore[arg-type]
        assert residual_detail(region(original, box), region(out, box)) < REDACTED_BELOW


def test_pixelation_has_at_most_eight_by_eight_blocks() -> None:
    original = image(FACES / "astronaut.png")
    box = (150.0, 20.0, 300.0, 215.0)
    out = original.copy()
    cover(out, box, "pixelate", 8)
    patch = region(out, box).reshape(-1, 3)
    assert len(np.unique(patch, axis=0)) <= 64


def test_redaction_fails_closed_without_a_model() -> None:
    redactor = Redactor(None, real_parts().redactor.plates, RedactionConfig())
    maker = SnapshotMaker(redactor, SnapshotConfig())
    assert maker.make(image(BUS), [], [], 0.0, "test") is None
    stats = maker.stats()
    assert stats.withheld == 1 and stats.encoded == 0 and not stats.redaction_available
    assert stats.latest_jpeg is None and "face detector" in (stats.last_error or "")


def test_no_snapshot_exists_when_the_face_model_is_removed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shipped = ModelRegistry()
    for name, spec in REGISTRY.items():
        if not name.startswith("centerface"):
            os.symlink(shipped.path(name), models / spec.filename)
    config = tmp_path / "pole.toml"
    config.write_text(f'[vision.inference]\nmodels_dir = "{models}"\n')
    out = tmp_path / "out"
    assert replay_main(FACES, out, config) == 0
    events = read_jsonl(out / "events.jsonl")
    assert len(events) >= len(FACE_COUNTS)
    for event in events:
        assert event["media"] == [] and event["snapshot"] is None
        assert "centerface_int8.onnx" in event["data"]["snapshot_withheld"]
    assert list((out / "snapshots").iterdir()) == []


def _composite_faces(small_faces: bool) -> list[tuple[float, float]]:
    """(face height, covered fraction) of every labelled face of the 640x480 composite."""
    labels = json.loads((PRIVACY / "labels.json").read_text())["composite_640x480.jpg"]["faces"]
    img = image(PRIVACY / "composite_640x480.jpg")
    parts = real_parts()
    config = parts.redactor.config.model_copy(
        update={"small_faces": parts.redactor.config.small_faces.model_copy(update={"enabled": small_faces})}
    )
    redactor = Redactor(parts.redactor.faces, parts.redactor.plates, config)
    found = parts.detector.detect(img)
    redaction = redactor.redact(img, [d.box for d in found if d.label in PEOPLE], [])
    regions = [r.box for r in redaction.regions]
    return [(f["height"], covered_fraction(tuple(f["box"]), regions)) for f in labels]


def test_faces_down_to_10_px_are_covered_at_640x480() -> None:
    assert all(fraction >= 0.9 for _, fraction in _composite_faces(True))


def test_without_the_tiled_pass_the_smallest_faces_are_left() -> None:
    left = [height for height, fraction in _composite_faces(False) if fraction < 0.9]
    assert left and max(left) < 16, left


def _merge_by_definition(found: list[Find], min_iou: float = 0.3) -> list[Find]:
    merged: list[Find] = []
    for kind, box, score in sorted(found, key=lambda f: -f[2]):
        for i, (k, b, s) in enumerate(merged):
            if k == kind and iou(b, box) >= min_iou:
                merged[i] = (k, (min(b[0], box[0]), min(b[1], box[1]), max(b[2], box[2]), max(b[3], box[3])), s)
                break
        else:
            merged.append((kind, box, score))
    return merged


_BOX = st.tuples(st.floats(0, 100), st.floats(0, 100), st.floats(0, 30), st.floats(0, 30)).map(
    lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3])
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["face", "plate"]), _BOX, st.floats(0, 1)), max_size=40))
def test_merging_overlapping_finds_follows_its_definition(found: list[Find]) -> None:
    got = merge_overlapping(found)
    want = _merge_by_definition(found)
    assert [(k, s) for k, _, s in got] == [(k, s) for k, _, s in want]
    for (_, a, _), (_, b, _) in zip(got, want, strict=True):
        assert a == pytest.approx(b)
