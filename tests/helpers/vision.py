"""Shared pieces of the vision tests: the real models loaded once, a list sink, media paths."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gateway.tmpfs import use_memory_for_temp_files
from gateway.vision.config import VisionConfig
from gateway.vision.pipeline import VisionParts
from gateway.vision.setup import load_parts
from sync.events import Accepted, NewEvent

DATA = Path(__file__).resolve().parent.parent / "data"
FACES = DATA / "faces"
VEHICLES = DATA / "vehicles"
CLIP = DATA / "video" / "vtest_12s.avi"
BUS = VEHICLES / "voc2011_000025_bus_plate.jpg"
BUS_PLATE = (217, 308, 294, 329)  # x1, y1, x2, y2 of "EBY 584", from the MANIFEST
FACE_COUNTS = {"astronaut.png": 1, "basketball1.png": 2, "messi5.jpg": 1, "voc2011_000003.jpg": 2}


@functools.cache
def real_parts() -> VisionParts:
    """The shipped models, loaded once for the whole test session (they are read-only).

    As in the daemon, temporary files go to memory first, or tesseract is left out.
    """
    use_memory_for_temp_files()
    return load_parts(VisionConfig())


def image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return img


def empty_street() -> np.ndarray:
    """The clip's street with nobody on it: the per-pixel median over its frames."""
    cap = cv2.VideoCapture(str(CLIP))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return np.median(np.stack(frames[::3]), axis=0).astype(np.uint8)


class ListSink:
    """An EventSink that keeps events in a list."""

    def __init__(self) -> None:
        self.events: list[NewEvent] = []

    async def put(self, event: NewEvent) -> Accepted:
        self.events.append(event)
        return Accepted(str(len(self.events)), len(self.events))

    async def put_many(self, events: list[NewEvent]) -> list[Accepted]:
        return [await self.put(e) for e in events]

    def of(self, type_: str) -> list[NewEvent]:
        return [e for e in self.events if e.type == type_]

    def dump(self) -> str:
        """Everything the events would say, as text (data and location)."""
        return json.dumps([{"type": e.type, "data": e.data} for e in self.events], default=str)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


PRIVACY = DATA / "privacy"


def face_cuts() -> list[tuple[np.ndarray, tuple[float, float, float, float]]]:
    """The two largest labelled faces of the 1920x1080 composite, each with a face size of context around it,
    and the face's box in the cut."""
    labels = json.loads((PRIVACY / "labels.json").read_text())["composite_1920x1080.jpg"]["faces"]
    picture = image(PRIVACY / "composite_1920x1080.jpg")
    cuts = []
    for face in sorted(labels, key=lambda f: -f["height"])[:2]:
        x1, y1, x2, y2 = face["box"]
        w, h = x2 - x1, y2 - y1
        cx1, cy1 = int(x1 - w), int(y1 - h)
        cut = picture[cy1 : int(y2 + h), cx1 : int(x2 + w)]
        cuts.append((cut, (x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1)))
    return cuts


def moving_faces(
    heights: list[int], frames: int, size: tuple[int, int] = (640, 480), step_px: int = 6
) -> tuple[list[np.ndarray], list[list[tuple[float, float, float, float]]]]:
    """A video of real faces of ``heights`` px on the empty street, each crossing the frame on its own row.

    Returns the frames and, per frame, each face's box.
    """
    width, height = size
    street = cv2.resize(empty_street(), size, interpolation=cv2.INTER_AREA)
    cuts = face_cuts()
    video: list[np.ndarray] = []
    boxes: list[list[tuple[float, float, float, float]]] = []
    for i in range(frames):
        frame = street.copy()
        here = []
        for k, target in enumerate(heights):
            cut, face = cuts[k % len(cuts)]
            s = target / (face[3] - face[1])
            small = cv2.resize(cut, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            x = int(0.05 * width + (i * step_px + 97 * k) % int(0.8 * width))
            y = int(0.1 * height + k * 0.8 * height / len(heights))
            h, w = small.shape[:2]
            frame[y : y + h, x : x + w] = small
            here.append((x + face[0] * s, y + face[1] * s, x + face[2] * s, y + face[3] * s))
        video.append(frame)
        boxes.append(here)
    return video, boxes
