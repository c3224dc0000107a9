"""Plate reading accuracy of tesseract, PP-OCR and both together, on synthetic plates and the real bus plate.

Usage: python bench/plates.py [--plates 200] [--seed 1]

We have one real readable plate, so the comparison that chose the default
recognisers runs on generated ones: random plate texts drawn in OpenCV's
Hershey fonts on white or yellow plates with a frame, then degraded as a pole
sees them (character heights of 7-30 px, a few degrees of rotation and
perspective, blur, sensor noise, JPEG at quality 60-90). The pipeline's own
plate finder (PP-OCR text detection) locates each plate in its scene; its
best candidate is rectified and read by each recogniser alone, and the scene
goes through the pipeline's plate reader with both recognisers. A read counts
when its normalised text equals the plate's; a plate the finder misses counts
as a miss for all. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.tmpfs import use_memory_for_temp_files  # noqa: E402
from gateway.vision.config import PlateReadingConfig  # noqa: E402
from gateway.vision.plates import PlateReader  # noqa: E402
from gateway.vision.privacy import normalise_plate  # noqa: E402
from models.ocr import PaddleRecogniser, PlateRecogniser, TesseractRecogniser, grow_quad, rectify  # noqa: E402
from models.plates import PaddleTextPlateFinder  # noqa: E402
from models.redact import RedactionConfig  # noqa: E402
from models.registry import ModelRegistry  # noqa: E402

BUS = ROOT / "tests" / "data" / "vehicles" / "voc2011_000025_bus_plate.jpg"
BUS_VEHICLE = (4.9, 17.2, 427.9, 370.8)  # NanoDet's box of the bus
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX)
FORMATS = ("LLLDDD", "LLDDLLL", "DLLLDDD", "LLDDDDLL", "LLLDDDD")


def plate_text(rng: random.Random) -> str:
    letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
    return "".join(rng.choice(letters) if c == "L" else rng.choice(string.digits) for c in rng.choice(FORMATS))


def render(rng: random.Random, text: str) -> np.ndarray:
    """A plain scene (as if a vehicle crop) with the plate in its middle."""
    font = rng.choice(FONTS)
    scale, thickness = 2.0, rng.choice((3, 4))
    (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    pad_x, pad_y = 18, 16
    plate = np.full((th + 2 * pad_y, tw + 2 * pad_x, 3), rng.choice(((245, 245, 245), (40, 200, 240))), np.uint8)
    cv2.rectangle(plate, (3, 3), (plate.shape[1] - 4, plate.shape[0] - 4), (20, 20, 20), 3)
    cv2.putText(plate, text, (pad_x, pad_y + th), font, scale, (15, 15, 15), thickness, cv2.LINE_AA)
    char_px = rng.uniform(7, 30)
    s = char_px / th
    w, h = plate.shape[1] * s, plate.shape[0] * s
    scene = np.full((int(h * 3 + 40), int(w * 1.6 + 40), 3), rng.randint(60, 160), np.uint8)
    cx, cy = scene.shape[1] / 2, scene.shape[0] / 2
    angle = np.radians(rng.uniform(-4, 4))
    skew = rng.uniform(-0.08, 0.08) * h
    corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2 + skew], [w / 2, h / 2 + skew], [-w / 2, h / 2]])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = (corners @ rot.T + [cx, cy]).astype(np.float32)
    src = np.array([[0, 0], [plate.shape[1], 0], [plate.shape[1], plate.shape[0]], [0, plate.shape[0]]], np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(plate, matrix, (scene.shape[1], scene.shape[0]), flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.full(plate.shape[:2], 255, np.uint8), matrix, (scene.shape[1], scene.shape[0]))
    scene[mask > 0] = warped[mask > 0]
    scene = cv2.GaussianBlur(scene, (0, 0), rng.uniform(0.3, 1.0))
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, rng.uniform(2, 8), scene.shape)
    scene = np.clip(scene + noise, 0, 255).astype(np.uint8)
    scene = cv2.imdecode(
        cv2.imencode(".jpg", scene, [cv2.IMWRITE_JPEG_QUALITY, rng.randint(60, 90)])[1], cv2.IMREAD_COLOR
    )
    return scene


def main() -> None:
    use_memory_for_temp_files()  # as the daemon does: tesseract's plate crops go through memory
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    registry = ModelRegistry()
    engines: dict[str, PlateRecogniser] = {
        "tesseract": TesseractRecogniser(),
        "ppocr": PaddleRecogniser(registry.verified_path("ppocr_rec"), 2),
    }
    finder = PaddleTextPlateFinder(registry.verified_path("ppocr_det"), 2)
    redaction = RedactionConfig()
    any_confidence = PlateReadingConfig(min_confidence=0.0)
    combined = PlateReader(finder, list(engines.values()), any_confidence, redaction)
    alone = {name: PlateReader(finder, [engine], any_confidence, redaction) for name, engine in engines.items()}
    rng = random.Random(args.seed)
    samples = [(text, render(rng, text)) for text in (plate_text(rng) for _ in range(args.plates))]
    bus = cv2.imread(str(BUS))
    right = dict.fromkeys([*engines, "combined"], 0)
    found = 0
    times: dict[str, list[float]] = {name: [] for name in right}
    bus_reads: dict[str, str | None] = {}
    for text, scene in [*samples, ("EBY584", bus)]:
        whole = (0.0, 0.0, float(scene.shape[1]), float(scene.shape[0]))
        vehicle = BUS_VEHICLE if scene is bus else whole
        candidates = finder.find(scene, vehicle, redaction.plate_threshold)
        reads: dict[str, str | None] = dict.fromkeys(right)
        if candidates:
            found += scene is not bus
            for name, engine in engines.items():
                crop = rectify(scene, grow_quad(candidates[0].quad, *engine.margin), 64)
                start = time.perf_counter()
                result = engine.read(crop)
                times[name].append(time.perf_counter() - start)
                reads[name] = normalise_plate(result.text) if result else None
        start = time.perf_counter()
        read = combined.read(scene, vehicle)
        times["combined"].append(time.perf_counter() - start)
        reads["combined"] = read.text if read else None
        if scene is bus:
            # The bus's best text candidate is not its plate: each reader alone goes through all of them.
            bus_reads = {name: getattr(reader.read(scene, vehicle), "text", None) for name, reader in alone.items()}
            bus_reads["combined"] = reads["combined"]
            continue
        for name, got in reads.items():
            right[name] += got == text
    summary = {
        "bench": "plates",
        "plates": args.plates,
        "found_by_detector": round(found / args.plates, 3),
        **{f"accuracy_{name}": round(n / args.plates, 3) for name, n in right.items()},
        **{f"median_ms_{name}": round(statistics.median(t) * 1000, 1) for name, t in times.items()},
        "bus_plate_reads": bus_reads,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
