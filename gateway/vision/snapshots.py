"""Redacted JPEG snapshots: the only way a picture leaves the pipeline.

A snapshot is made by redacting the full frame first and only then scaling
and encoding it; when redaction is unavailable or fails, no JPEG is made at
all (fail closed) and the failure is counted, logged and shown in the stats.
Raw frames are never written anywhere.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import structlog

from gateway.vision.config import SnapshotConfig
from models.detection import Box
from models.redact import RedactionUnavailable, Redactor
from models.smallfaces import TileMemory

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A redacted, encoded frame, what was covered in it, and how long each step took."""

    jpeg: bytes
    width: int
    height: int
    faces: int
    plates: int
    redact_s: float
    encode_s: float


@dataclass(frozen=True, slots=True)
class SnapshotStats:
    encoded: int
    withheld: int
    redactions: dict[str, int]
    redaction_available: bool
    last_error: str | None
    latest_jpeg: bytes | None
    latest_ts: float | None


class SnapshotMaker:
    """Redacts and encodes frames; thread-safe (it runs on the inference pool)."""

    def __init__(self, redactor: Redactor, config: SnapshotConfig) -> None:
        self.redactor = redactor
        self.config = config
        self._lock = threading.Lock()
        self._encoded = 0
        self._withheld = 0
        self._redactions = {"face": 0, "plate": 0}
        self._last_error: str | None = redactor.unavailable
        self._latest: bytes | None = None
        self._latest_ts: float | None = None
        self._failing = False

    def make(
        self,
        image: np.ndarray,
        people: Sequence[Box],
        vehicles: Sequence[Box],
        ts: float,
        camera: str,
        memory: TileMemory | None = None,
        now: float = 0.0,
    ) -> Snapshot | None:
        """A redacted snapshot of ``image``, or None when redaction is unavailable (nothing is encoded then).

        ``memory`` is the camera's small-face tile memory (see :meth:`models.redact.Redactor.redact`).
        """
        start = time.perf_counter()
        try:
            redaction = self.redactor.redact(image, people, vehicles, memory, now)
        except RedactionUnavailable as exc:
            with self._lock:
                self._withheld += 1
                self._last_error = str(exc)
                first = not self._failing
                self._failing = True
            if first:
                log.error(
                    "snapshot_withheld", camera=camera, reason=str(exc), detail="no image is kept until redaction works"
                )
            return None
        redacted = time.perf_counter()
        out = redaction.image
        if self.config.max_width is not None and out.shape[1] > self.config.max_width:
            scale = self.config.max_width / out.shape[1]
            out = cv2.resize(
                out, (self.config.max_width, max(1, int(round(out.shape[0] * scale)))), interpolation=cv2.INTER_AREA
            )
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        jpeg = buf.tobytes()
        encoded = time.perf_counter()
        faces, plates = redaction.count("face"), redaction.count("plate")
        with self._lock:
            if self._failing:
                log.info("snapshot_redaction_restored", camera=camera)
            self._failing = False
            self._last_error = None
            self._encoded += 1
            self._redactions["face"] += faces
            self._redactions["plate"] += plates
            self._latest = jpeg
            self._latest_ts = ts
        return Snapshot(jpeg, out.shape[1], out.shape[0], faces, plates, redacted - start, encoded - redacted)

    def show(self, i420: np.ndarray, ts: float) -> None:
        """Make an already redacted clip frame (I420) the status page's latest picture (it goes into no event)."""
        ok, buf = cv2.imencode(
            ".jpg", cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420), [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality]
        )
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        with self._lock:
            self._latest = buf.tobytes()
            self._latest_ts = ts

    def stats(self) -> SnapshotStats:
        with self._lock:
            return SnapshotStats(
                encoded=self._encoded,
                withheld=self._withheld,
                redactions=dict(self._redactions),
                redaction_available=self.redactor.available and not self._failing,
                last_error=self._last_error,
                latest_jpeg=self._latest,
                latest_ts=self._latest_ts,
            )
