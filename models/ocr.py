"""Reading the text on a plate candidate: rectification, clean-up, and two recognisers.

Tesseract (Debian's ``tesseract-ocr``, through pytesseract) is a page reader:
it reads a plate only from a tight, upright, binarised crop with the plate's
frame removed, so that is what :func:`clean_for_tesseract` makes. The PP-OCRv4
recogniser reads the rectified colour crop directly. Both answer raw text and
a confidence in 0..1; deciding whether it is a plate is the caller's job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import pytesseract

from models.plates import Quad
from models.runtime import InferenceCallback, InferenceTimer, ModelStats, OnnxModel

# No character whitelist: with one, tesseract 5's LSTM reports every word at confidence 0.
_TESSERACT_CONFIG = "--psm 7 --oem 1"
_TESSERACT_HEIGHT = 64  # px of the rectified plate: characters around 40 px, where LSTM reads best
_PADDLE_HEIGHT = 48  # the recogniser's fixed input height


@dataclass(frozen=True, slots=True)
class OcrResult:
    """Raw text read by one recogniser and its confidence (0..1)."""

    engine: str
    text: str
    confidence: float


class PlateRecogniser(Protocol):
    """Reads the text of an upright, rectified plate crop (BGR).

    ``margin`` is how much to grow the text detector's quadrilateral (fractions
    of its width and height on each side) before rectifying it for this reader.
    """

    name: str
    margin: tuple[float, float]

    def read(self, plate: np.ndarray) -> OcrResult | None: ...

    def stats(self) -> ModelStats: ...


def rectify(image: np.ndarray, quad: Quad, height: int) -> np.ndarray:
    """The quadrilateral warped to an upright rectangle ``height`` pixels tall."""
    corners = np.array(quad, np.float32)
    top = float(np.linalg.norm(corners[1] - corners[0]))
    side = float(np.linalg.norm(corners[3] - corners[0]))
    width = max(8, int(round(height * top / max(side, 1.0))))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    matrix = cv2.getPerspectiveTransform(corners, target)
    return cv2.warpPerspective(image, matrix, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def grow_quad(quad: Quad, width_margin: float, height_margin: float) -> Quad:
    """The quadrilateral grown along its own axes by these fractions of its width and height on each side."""
    tl, tr, br, bl = (np.array(p, np.float64) for p in quad)
    centre = (tl + tr + br + bl) / 4
    across = (tr - tl + br - bl) / 2 * (0.5 + width_margin)
    down = (bl - tl + br - tr) / 2 * (0.5 + height_margin)
    corners = (centre - across - down, centre + across - down, centre + across + down, centre - across + down)
    return tuple((float(x), float(y)) for x, y in corners)  # type: ignore[return-value]


def clean_for_tesseract(plate: np.ndarray) -> np.ndarray:
    """Dark characters on white, the plate's frame and specks removed, with a white margin.

    Characters are the connected components that stand 30-95% of the crop's
    height, away from its edges; anything else (the frame, bolts, dirt, the EU
    band) would be read as extra characters. The crop should hold the plate
    with a margin (see :func:`grow_quad`).
    """
    grey = plate if plate.ndim == 2 else cv2.cvtColor(plate, cv2.COLOR_BGR2GRAY)
    grey = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(2, 4)).apply(grey)
    _, binary = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    height, width = binary.shape
    centre = binary[height // 4 : 3 * height // 4]
    if centre.mean() < 127:  # light text on a dark plate: make the ink dark
        binary = 255 - binary
    ink = (binary == 0).astype(np.uint8)
    # The frame's edges are strokes far longer than any character's: lift them off first,
    # or characters touching the frame would be discarded with it.
    across = cv2.morphologyEx(ink, cv2.MORPH_OPEN, np.ones((1, max(3, width // 3)), np.uint8))
    down = cv2.morphologyEx(ink, cv2.MORPH_OPEN, np.ones((max(3, int(0.85 * height)), 1), np.uint8))
    ink = cv2.bitwise_and(ink, 1 - cv2.bitwise_or(across, down))
    count, labels, boxes, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    keep = np.zeros(count, bool)
    edge = 0.05 * width
    for i in range(1, count):
        x, y, w, h, pixels = boxes[i]
        touches = y <= 0 or y + h >= height or x <= 0 or x + w >= width
        frame_remnant = w < 0.25 * h and (x < edge or x + w > width - edge)
        # Wide components are allowed: blur and bold fonts join neighbouring characters.
        sized = 0.3 * height <= h <= 0.95 * height and w <= 0.6 * width and pixels >= 0.02 * h * h
        keep[i] = sized and not touches and not frame_remnant
    cleaned = np.where(keep[labels], 0, 255).astype(np.uint8)
    return cv2.copyMakeBorder(cleaned, 12, 12, 16, 16, cv2.BORDER_CONSTANT, value=255)


class TesseractRecogniser:
    """A :class:`PlateRecogniser` on tesseract's LSTM engine reading one line of text."""

    name = "tesseract"
    margin = (0.05, 0.25)  # its clean-up needs the characters clear of the crop's edges

    def __init__(self, timeout_s: float = 5.0, on_inference: InferenceCallback | None = None) -> None:
        self.timeout_s = timeout_s
        self.timer = InferenceTimer(self.name, on_inference)
        self.version = str(pytesseract.get_tesseract_version())

    def read(self, plate: np.ndarray) -> OcrResult | None:
        scale = _TESSERACT_HEIGHT / plate.shape[0]
        upright = cv2.resize(plate, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        cleaned = clean_for_tesseract(upright)
        if cleaned.min() == 255:
            return None
        start = time.perf_counter()
        data = pytesseract.image_to_data(
            cleaned, config=_TESSERACT_CONFIG, output_type=pytesseract.Output.DICT, timeout=self.timeout_s
        )
        self.timer.record(time.perf_counter() - start)
        words = [(w, float(c)) for w, c in zip(data["text"], data["conf"], strict=True) if w.strip()]
        if not words:
            return None
        text = "".join(w for w, _ in words)
        confidence = min(c for _, c in words) / 100.0
        return OcrResult(self.name, text, max(0.0, confidence))

    def stats(self) -> ModelStats:
        return self.timer.stats()


class PaddleRecogniser:
    """A :class:`PlateRecogniser` on the PP-OCRv4 recogniser (CTC over its own character list)."""

    name = "ppocr_rec"
    margin = (0.0, 0.0)  # it was trained on the detector's own tight text boxes

    def __init__(self, model: Path, threads: int, on_inference: InferenceCallback | None = None) -> None:
        self.model = OnnxModel(self.name, model, threads, on_inference, fixed_shapes=False)
        characters = self.model.metadata().get("character")
        if not characters:
            raise ValueError("the PP-OCR recogniser file has no 'character' list in its metadata")
        # Index 0 is the CTC blank; the list ends with a space, as PaddleOCR builds it.
        self.alphabet = ["", *characters.splitlines(), " "]

    def read(self, plate: np.ndarray) -> OcrResult | None:
        if plate.ndim == 2:
            plate = cv2.cvtColor(plate, cv2.COLOR_GRAY2BGR)
        width = max(_PADDLE_HEIGHT, int(round(_PADDLE_HEIGHT * plate.shape[1] / plate.shape[0])))
        blob = cv2.dnn.blobFromImage(plate, 2 / 255, (width, _PADDLE_HEIGHT), (127.5, 127.5, 127.5), swapRB=False)
        (probs,) = self.model.run(blob)
        best = probs[0].argmax(axis=1)
        best_p = probs[0].max(axis=1)
        chosen = np.ones(len(best), bool)
        chosen[1:] = best[1:] != best[:-1]
        chosen &= best != 0
        if not chosen.any():
            return None
        chars = [self.alphabet[i] for i in best[chosen]]
        probs = best_p[chosen]
        # A plate's separators are dropped by normalisation: only letters and digits vouch for the read.
        counted = [p for c, p in zip(chars, probs, strict=True) if c.isascii() and c.isalnum()]
        return OcrResult(self.name, "".join(chars), float(min(counted) if counted else probs.min()))

    def stats(self) -> ModelStats:
        return self.model.timer.stats()
