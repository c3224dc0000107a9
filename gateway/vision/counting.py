"""Counting lines: tracks crossing a line, per direction and class, aggregated per minute.

A track is on one side of a line or the other, judged by its ground point
(bottom centre of its box). Within a small band around the line the side is
left unchanged, so a track jittering on the line is not counted again and
again; a crossing is a change of side whose path meets the line segment.
Counts are kept per wall-clock minute and reported once the minute is over.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from gateway.vision.config import LineConfig
from gateway.vision.tracker import Track

PERIOD_S = 60.0
_DEAD_BAND = 0.01  # fraction of the frame around a line where a track's side is not updated

Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class CountReport:
    """Crossings of one line in one period: ``counts[direction][label]``."""

    line: str
    period_start: float
    period_s: float
    counts: dict[str, dict[str, int]]


@dataclass(frozen=True, slots=True)
class Crossing:
    """One track crossing one line (what a clip trigger needs to know)."""

    line: str
    direction: str
    label: str
    track_id: int


def _side(line: LineConfig, p: Point) -> float:
    (x1, y1), (x2, y2) = line.start, line.end
    length = max(((x2 - x1) ** 2 + (y2 - y1) ** 2) ** 0.5, 1e-9)
    # Positive on the side the forward direction points to (start-to-end turned clockwise on screen).
    return ((x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1)) / length


def _segments_meet(a: Point, b: Point, c: Point, d: Point) -> bool:
    def orient(p: Point, q: Point, r: Point) -> float:
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])

    o1, o2, o3, o4 = orient(a, b, c), orient(a, b, d), orient(c, d, a), orient(c, d, b)
    return o1 * o2 <= 0 and o3 * o4 <= 0


class LineCounter:
    """Counts crossings of the configured lines by the tracks of one camera."""

    def __init__(self, lines: list[LineConfig], period_s: float = PERIOD_S) -> None:
        self.lines = lines
        self.period_s = period_s
        # (track id, line name) -> (side sign, normalised anchor when last firmly on that side)
        self._sides: dict[tuple[int, str], tuple[int, Point]] = {}
        self._buckets: dict[float, dict[str, dict[str, dict[str, int]]]] = {}
        self.total = 0

    def reset(self) -> None:
        self._sides.clear()

    def update(self, tracks: list[Track], width: int, height: int, ts: float) -> list[Crossing]:
        """Look at this frame's confirmed tracks; the crossings counted."""
        if not self.lines:
            return []
        counted: list[Crossing] = []
        live: set[int] = set()
        for track in tracks:
            live.add(track.id)
            ax, ay = track.anchor
            here = (ax / width, ay / height)
            for line in self.lines:
                key = (track.id, line.name)
                distance = _side(line, here)
                if abs(distance) < _DEAD_BAND:
                    continue
                sign = 1 if distance > 0 else -1
                before = self._sides.get(key)
                self._sides[key] = (sign, here)
                if before is None or before[0] == sign:
                    continue
                if not _segments_meet(before[1], here, line.start, line.end):
                    continue
                direction = line.forward if sign > 0 else line.backward
                self._count(ts, line.name, direction, track.label)
                counted.append(Crossing(line.name, direction, track.label, track.id))
        self._sides = {k: v for k, v in self._sides.items() if k[0] in live}
        self.total += len(counted)
        return counted

    def _count(self, ts: float, line: str, direction: str, label: str) -> None:
        start = (ts // self.period_s) * self.period_s
        per_line = self._buckets.setdefault(start, {})
        per_direction = per_line.setdefault(line, defaultdict(dict))
        per_direction[direction][label] = per_direction[direction].get(label, 0) + 1

    def due(self, ts: float) -> list[CountReport]:
        """Reports of every period that ended by ``ts``, oldest first."""
        ended = sorted(start for start in self._buckets if start + self.period_s <= ts)
        return [r for start in ended for r in self._report(start)]

    def flush(self) -> list[CountReport]:
        """Reports of every period with crossings, ended or not (at shutdown or the end of a replay)."""
        return [r for start in sorted(self._buckets) for r in self._report(start)]

    def _report(self, start: float) -> list[CountReport]:
        lines = self._buckets.pop(start)
        return [
            CountReport(name, start, self.period_s, {d: dict(by_label) for d, by_label in counts.items()})
            for name, counts in lines.items()
        ]
