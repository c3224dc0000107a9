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
