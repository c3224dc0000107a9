"""Camera faults and tamper, judged on the motion gate's small grey frames.

- ``down``: the camera gives no frames (reported by the camera itself);
- ``dark``: mean brightness under ``dark_level`` for ``dark_s``;
- ``frozen``: consecutive frames practically identical for ``frozen_s``
  (a live sensor always has some noise; a stuck decoder or driver has none),
  unless the lens is covered or dark, which explains a still picture;
- ``covered`` (tamper): detail (mean gradient magnitude) below
  ``covered_ratio`` of the normal learned over time, for ``covered_s``;
- ``moved`` (tamper): the frame's edges no longer line up with the learned
  view's (their correlation falls under ``moved_similarity`` of its normal
  level) for ``moved_s``. The learned view is a running average of edge maps,
  in which passers-by fade and the street's fixed edges stay; a shift of 5%
  of the frame or a turn of 2 degrees halves the correlation. A move is
  reported once and the new view is learned afresh.

Each condition is a state with a begin (``active=True``) and an end
(``active=False``), except ``moved``, which is a one-off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from gateway.vision.config import HealthConfig

Condition = Literal["down", "dark", "frozen", "covered", "moved"]
TAMPER: frozenset[Condition] = frozenset({"covered", "moved"})

_LEARN_RATE = 0.02  # per frame, for the normal level of detail, view and similarity


@dataclass(frozen=True, slots=True)
class HealthChange:
    """A condition beginning or ending; ``score`` is its measure (brightness, change, detail ratio, shift)."""

    condition: Condition
    active: bool
    score: float
    detail: str

    @property
    def is_tamper(self) -> bool:
        return self.condition in TAMPER


def _edges(grey: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.magnitude(gx, gy)


class _Hold:
    """A condition that must hold for ``hold_s`` before it is active."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.since: float | None = None
        self.active = False

    def step(self, true: bool, t: float) -> bool | None:
        """True when it becomes active, False when it ends, None otherwise."""
        if not true:
            self.since = None
            if self.active:
                self.active = False
                return False
            return None
        if self.since is None:
            self.since = t
        if not self.active and t - self.since >= self.hold_s:
            self.active = True
            return True
        return None


class CameraHealth:
    """Watches one camera."""

    def __init__(self, config: HealthConfig) -> None:
        self.config = config
        self._dark = _Hold(config.dark_s)
        self._frozen = _Hold(config.frozen_s)
        self._covered = _Hold(config.covered_s)
        self._moved = _Hold(config.moved_s)
        self._down = _Hold(0.0)
        self._previous: np.ndarray | None = None
        self._normal_detail: float | None = None
        self._view: np.ndarray | None = None
        self._normal_similarity: float | None = None
        self._learn_until = 0.0

    @property
    def active(self) -> list[Condition]:
        holds: list[tuple[Condition, _Hold]] = [
            ("down", self._down),
            ("dark", self._dark),
            ("frozen", self._frozen),
            ("covered", self._covered),
        ]
        return [name for name, hold in holds if hold.active]

    def camera(self, up: bool, t: float, error: str | None) -> list[HealthChange]:
        """Feed the camera's up/down state."""
        change = self._down.step(not up, t)
        if change is None:
            return []
        return [HealthChange("down", change, 0.0, (error or "no frames") if change else "frames again")]

    def observe(self, grey: np.ndarray, t: float) -> list[HealthChange]:
        """Feed one small grey frame at stream time ``t``."""
        c = self.config
        changes: list[HealthChange] = []
        brightness = float(grey.mean())
        self._note(
            changes,
            "dark",
            self._dark.step(brightness < c.dark_level, t),
            brightness,
            f"mean brightness {brightness:.0f}/255",
        )

        edges = _edges(grey)
        detail = float(edges.mean())
        if self._normal_detail is None:
            self._normal_detail = detail
        ratio = detail / max(self._normal_detail, 1e-6)
        covered = ratio < c.covered_ratio
        self._note(changes, "covered", self._covered.step(covered, t), ratio, f"detail at {ratio:.0%} of normal")
        if not covered and not self._covered.active:
            self._normal_detail += _LEARN_RATE * (detail - self._normal_detail)

        if self._previous is not None and self._previous.shape == grey.shape:
            change = float(cv2.absdiff(grey, self._previous).mean())
            # A covered or dark lens also shows a still picture; that is already said.
            still = change < c.frozen_level and not covered and brightness >= c.dark_level
            self._note(changes, "frozen", self._frozen.step(still, t), change, f"mean change {change:.3f}")
        self._previous = grey

        # A view with much of its detail gone (smeared lens, fog) cannot be compared for a move.
        if ratio < 2 * c.covered_ratio or brightness < c.dark_level:
            return changes
        if self._view is None:
            self._view = edges
            self._learn_until = t + c.learn_s
            return changes
        similarity = _correlation(self._view, edges)
        learning = t < self._learn_until
        suspect = (
            not learning
            and self._normal_similarity is not None
            and (similarity < c.moved_similarity * self._normal_similarity)
        )
        if not suspect:
            # A suspected move must not be learned as the normal view while it is being timed.
            self._view += _LEARN_RATE * (edges - self._view) if not learning else 0.2 * (edges - self._view)
            self._normal_similarity = (
                similarity
                if self._normal_similarity is None
                else self._normal_similarity + _LEARN_RATE * (similarity - self._normal_similarity)
            )
        if self._moved.step(suspect, t):
            normal = self._normal_similarity or 1.0
            changes.append(
                HealthChange(
                    "moved",
                    True,
                    similarity / normal,
                    f"view matches the learned one at {similarity / normal:.0%} of normal",
                )
            )
            self._moved = _Hold(c.moved_s)
            self._view = None
            self._normal_similarity = None
        return changes

    def _note(
        self, changes: list[HealthChange], condition: Condition, change: bool | None, score: float, detail: str
    ) -> None:
        if change is not None:
            changes.append(HealthChange(condition, change, score, detail))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return 0.0
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 1e-6 else 0.0
