"""Presence in zones: which people and vehicles stand in each zone, and when to say so.

A track is in a zone when its ground point (bottom centre) is inside the
zone's polygon. A zone is reported when its counts change (at most every
``min_interval_s``; a change inside that interval is reported when it ends),
while occupied at least every ``heartbeat_s``, and once when it empties.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from gateway.vision.config import PresenceConfig, ZoneConfig
from gateway.vision.tracker import Track


@dataclass(frozen=True, slots=True)
class PresenceReport:
    """What one zone holds now: ``counts`` per label (only labels present) and the track ids."""

    zone: str
    counts: dict[str, int]
    track_ids: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(slots=True)
class _ZoneState:
    reported: dict[str, int] | None = None
    reported_at: float | None = None


class ZonePresence:
    """Presence of one camera's tracks in the configured zones."""

    def __init__(self, zones: list[ZoneConfig], config: PresenceConfig) -> None:
        self.zones = zones
        self.config = config
        self._polygons = [np.array(z.polygon, np.float32).reshape(-1, 1, 2) for z in zones]
        self._state = {z.name: _ZoneState() for z in zones}

    def reset(self) -> None:
        self._state = {z.name: _ZoneState() for z in self.zones}

    def occupancy(self, tracks: list[Track], width: int, height: int) -> list[PresenceReport]:
        reports = []
        for zone, polygon in zip(self.zones, self._polygons, strict=True):
            counts: dict[str, int] = {}
            ids = []
            for track in tracks:
                ax, ay = track.anchor
                # The bottom edge of a full-frame zone is the frame's last row: clamp onto it.
                point = (min(ax / width, 1.0), min(ay / height, 1.0))
                if cv2.pointPolygonTest(polygon, point, False) >= 0:
                    counts[track.label] = counts.get(track.label, 0) + 1
                    ids.append(track.id)
            reports.append(PresenceReport(zone.name, dict(sorted(counts.items())), tuple(sorted(ids))))
        return reports

    def due(self, tracks: list[Track], width: int, height: int, t: float) -> list[PresenceReport]:
        """The zones to report now (``t`` on the stream's clock)."""
        out = []
        for report in self.occupancy(tracks, width, height):
            state = self._state[report.zone]
            if self._should_report(state, report, t):
                state.reported = report.counts
                state.reported_at = t
                out.append(report)
        return out

    def _should_report(self, state: _ZoneState, report: PresenceReport, t: float) -> bool:
        if self.config.every_frame:
            return report.total > 0 or bool(state.reported)
        if state.reported is None:
            return report.total > 0
        since = t - (state.reported_at if state.reported_at is not None else t)
        if since < self.config.min_interval_s:
            return False
        if report.counts != state.reported:
            return True
        return report.total > 0 and since >= self.config.heartbeat_s
