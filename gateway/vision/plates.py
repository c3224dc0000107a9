"""Reading a vehicle's plate: candidates from the text detector, text from one or more recognisers.

Every recogniser reads every candidate (best first, up to
``candidates_per_vehicle``); reads are normalised to A-Z and 0-9 and must
match the plate pattern. A text that two recognisers agree on takes the
higher of their confidences; otherwise the single most confident read wins.
The text returned here goes only through ``PlatePolicy.fields``: it is never
logged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gateway.vision.config import PlateReadingConfig
from gateway.vision.privacy import normalise_plate
from models.detection import Box
from models.ocr import PlateRecogniser, grow_quad, rectify
from models.plates import PlateCandidate, PlateFinder
from models.redact import RedactionConfig

_RECTIFY_HEIGHT = 64


@dataclass(frozen=True, slots=True)
class PlateRead:
    """A plausible plate: normalised text, confidence (0..1), the recognisers that read it, where it is."""

    text: str
    confidence: float
    engines: tuple[str, ...]
    candidate: PlateCandidate

    def __repr__(self) -> str:  # keep plate text out of logs and tracebacks
        return f"PlateRead(confidence={self.confidence:.2f}, engines={self.engines})"


class PlateReader:
    """Finds and reads the plate of one vehicle box."""

    def __init__(
        self,
        finder: PlateFinder,
        recognisers: Sequence[PlateRecogniser],
        config: PlateReadingConfig,
        redaction: RedactionConfig,
    ) -> None:
        if not recognisers:
            raise ValueError("a plate reader needs at least one recogniser")
        self.finder = finder
        self.recognisers = list(recognisers)
        self.config = config
        self.threshold = redaction.plate_threshold
        self._pattern = re.compile(config.pattern)

    def read(self, image: np.ndarray, vehicle: Box) -> PlateRead | None:
        """The best plausible read of the vehicle's plate, or None."""
        candidates = self.finder.find(image, vehicle, self.threshold)[: self.config.candidates_per_vehicle]
        best: PlateRead | None = None
        for candidate in candidates:
            reads: dict[str, list[tuple[str, float]]] = {}
            for recogniser in self.recognisers:
                result = recogniser.read(rectify(image, grow_quad(candidate.quad, *recogniser.margin), _RECTIFY_HEIGHT))
                if result is None:
                    continue
                text = normalise_plate(result.text)
                if self._pattern.match(text):
                    reads.setdefault(text, []).append((result.engine, result.confidence))
            for text, by in reads.items():
                read = PlateRead(text, max(c for _, c in by), tuple(e for e, _ in by), candidate)
                if best is None or (len(read.engines), read.confidence) > (len(best.engines), best.confidence):
                    best = read
        if best is None or best.confidence < self.config.min_confidence:
            return None
        return best
