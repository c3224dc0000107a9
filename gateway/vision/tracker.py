"""Stable track ids for detections across frames.

Greedy matching on the overlap between each detection and its track's box
moved by the track's velocity, people and vehicles separately (a vehicle that
the detector calls a truck on one frame and a bus on the next stays one track;
its label is the majority vote). A track that is not matched ends after
``max_age_s``, but only where detection looked: outside the motion gate's
region nothing was observed, so nothing is aged.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from gateway.vision.config import TrackerConfig
from models.detection import PEOPLE, Box, Detection, iou

Anchor = tuple[float, float]


def group_of(label: str) -> str:
    return "person" if label in PEOPLE else "vehicle"


@dataclass(slots=True)
class Track:
    """One object followed across frames. ``anchor`` is its ground point (bottom centre), in pixels."""

    id: int
    group: str
    box: Box
    score: float
    first_seen: float
    last_seen: float
    hits: int = 1
    velocity: tuple[float, float] = (0.0, 0.0)
    votes: Counter[str] = field(default_factory=Counter)
    previous_anchor: Anchor | None = None
    plate_attempts: int = 0
    plate_read: bool = False

    @property
    def label(self) -> str:
        return self.votes.most_common(1)[0][0]

    @property
    def anchor(self) -> Anchor:
        return ((self.box[0] + self.box[2]) / 2, self.box[3])

    def predicted(self, t: float) -> Box:
        dt = t - self.last_seen
        dx, dy = self.velocity[0] * dt, self.velocity[1] * dt
        return (self.box[0] + dx, self.box[1] + dy, self.box[2] + dx, self.box[3] + dy)


def _inside(point: Anchor, region: Box) -> bool:
    return region[0] <= point[0] <= region[2] and region[1] <= point[1] <= region[3]


class Tracker:
    """Tracks of one camera."""

    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self.tracks: dict[int, Track] = {}
        self._next_id = 1

    def reset(self) -> None:
        self.tracks.clear()

    def confirmed(self) -> list[Track]:
        return [t for t in self.tracks.values() if t.hits >= self.config.min_hits]

    def update(self, detections: list[Detection], t: float, observed: Box | None) -> list[Track]:
        """Match one frame's detections (in ``observed``, or the whole frame when None); the confirmed tracks."""
        for track in self.tracks.values():
            track.previous_anchor = track.anchor
        unmatched = list(range(len(detections)))
        pairs = sorted(
            (
                (iou(track.predicted(t), d.box), tid, di)
                for tid, track in self.tracks.items()
                for di, d in enumerate(detections)
                if group_of(d.label) == track.group
            ),
            reverse=True,
        )
        matched_tracks: set[int] = set()
        for overlap, tid, di in pairs:
            if overlap < self.config.iou_threshold:
                break
            if tid in matched_tracks or di not in unmatched:
                continue
            self._continue(self.tracks[tid], detections[di], t)
            matched_tracks.add(tid)
            unmatched.remove(di)
        for di in unmatched:
            d = detections[di]
            track = Track(self._next_id, group_of(d.label), d.box, d.score, t, t, votes=Counter({d.label: 1}))
            self.tracks[track.id] = track
            self._next_id += 1
        for tid in [tid for tid in self.tracks if tid not in matched_tracks]:
            track = self.tracks[tid]
            if track.last_seen == t:
                continue
            seen_here = observed is None or _inside(track.anchor, observed)
            if seen_here and t - track.last_seen > self.config.max_age_s:
                del self.tracks[tid]
        return self.confirmed()

    def _continue(self, track: Track, d: Detection, t: float) -> None:
        dt = t - track.last_seen
        if dt > 0:
            old = ((track.box[0] + track.box[2]) / 2, (track.box[1] + track.box[3]) / 2)
            new = ((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2)
            vx, vy = (new[0] - old[0]) / dt, (new[1] - old[1]) / dt
            track.velocity = (0.5 * track.velocity[0] + 0.5 * vx, 0.5 * track.velocity[1] + 0.5 * vy)
        track.box = d.box
        track.score = d.score
        track.last_seen = t
        track.hits += 1
        track.votes[d.label] += 1
