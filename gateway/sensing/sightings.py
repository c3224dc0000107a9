"""What the vision pipeline tells sensor fusion when it reads a plate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PlateSighting:
    """A plate read on one frame, handed to ``on_plate`` (e.g. to pair it with a radar speed).

    ``ts`` is the frame's wall-clock time (epoch seconds); ``track_id`` the
    vehicle's track on that camera, None when it was not tracked; ``plate`` is
    exactly ``PlatePolicy.fields(text)``, so it never holds plain text unless
    the policy is ``keep``; ``evidence_jpeg`` is the redacted full frame, None
    when no redacted image could be made (redaction unavailable: fail closed).
    """

    ts: float
    camera: str
    track_id: int | None
    plate: dict[str, Any]
    evidence_jpeg: bytes | None
