"""Redaction of every frame of a video (the frames of event clips), at a bounded cost per frame.

A snapshot runs every face and plate pass on its frame. A video cannot afford
that on every frame, so the passes are spread over frames and what they find
is carried to the frames around them:

- **Person tracks**: the predicted head region of every live person track is
  covered on every frame, found face or not; faces found in the head crops
  (all heads of a frame in one batched call, on frames where the detector
  ran) and plates found in vehicle boxes move with their track.
- **Whole frame**: the whole-frame face pass runs every ``whole_frame_every``
  frames.
- **Small faces**: every small moving blob the motion gate sees is cut out
  with a margin, enlarged at least ``upscale`` times and searched for faces
  on every frame (all blobs of a frame in one batched call): a small face that
  moves is looked at where it is now. The tiles of the band
  (:mod:`models.smallfaces`) are scanned a few per frame, where there was
  motion since a tile's last scan (oldest first), for the faces that stopped
  or sit in larger moving regions; a still scene is not scanned again.
- **Carried**: a face found outside any track stays covered for ``hold_frames``
  and until its tile (or the whole-frame pass) has looked again, grown by how
  far a face can move meanwhile (``face_speed``).
- **Look-ahead**: frames wait ``lookahead_frames`` before they are covered,
  so a face first found by a later pass is covered on the frames before it
  too. A face that a pass finds while it is in view is thus covered from
  ``lookahead_frames`` before that pass until it is no longer found.

If a pass cannot run (a model missing or failing), :meth:`VideoRedactor.push`
raises :class:`~models.redact.RedactionUnavailable`, drops every waiting frame
and keeps nothing: the caller keeps no clip.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.detection import Box, clip, expand, offset
from models.redact import Find, Kind, RedactionUnavailable, Redactor
from models.smallfaces import Tile, tile_grid, touched

Source = tuple[str, int]  # ("tile", index), ("whole", 0), ("head", track id), ("plate", track id)

_WHOLE: Source = ("whole", 0)
_HEAD_SHARE = 0.3  # top of a person box that holds the head, standing or sitting
_MAX_GROWTH = 3.0  # a carried face grows at most this many face heights on each side
_FACE_ASPECT = 1.3  # a face's height over its width, about
# Sides of the squares a moving blob is enlarged into for the face model: the smallest that enlarges it
# ``upscale`` times; blobs too large for the last are left to the tiles and the person tracks.
_MOTION_CROPS_PX = (128, 256)
_BLOB_MARGIN = 0.5  # around a moving blob, as a fraction of its longer side: a face at its edge is whole


class VideoRedactionConfig(BaseModel):
    """How the passes are spread over the frames of a video (clips)."""

    model_config = ConfigDict(extra="forbid")

    whole_frame_every: int = Field(
        10, ge=1, le=250, description="Run the whole-frame face pass on one frame in this many."
    )
    tiles_per_frame: float = Field(
        0.25,
        gt=0,
        le=16,
        description="Small-face tiles scanned per frame on average (each about 20 ms at 384 px on 2 cores); "
        "a full scan of the band takes tiles / this many frames.",
    )
    lookahead_frames: int = Field(
        10,
        ge=0,
        le=250,
        description="Frames held back (raw, in memory) before they are covered, so that a face a later pass finds "
        "is covered on them too.",
    )
    hold_frames: int = Field(
        10, ge=1, le=250, description="Frames a face found outside any track stays covered, at least."
    )
    face_speed: float = Field(
        6.0,
        ge=0,
        le=30,
        description="How fast (face heights per second) a carried face outside any track may move: its cover grows "
        "by this much per second away from when it was found, at most 3 face heights (6: someone walking across "
        "the view).",
    )
    head_margin: float = Field(
        0.15, ge=0, le=1, description="Margin around the head region of a person track, as a fraction of its size."
    )
    motion_crops_per_frame: int = Field(
        8,
        ge=0,
        le=32,
        description="Face-model work on moving blobs per frame, in 128 px squares (a blob enlarged into a 256 px "
        "square counts 4); smallest blobs first. Blobs too large to be enlarged twice into 256 px are left to the "
        "tiles and person tracks.",
    )
    plates_per_frame: int = Field(
        1, ge=0, le=8, description="Vehicles searched for plates per detection frame (least recently searched first)."
    )
    plate_recheck_frames: int = Field(
        5,
        ge=1,
        le=250,
        description="A vehicle is searched for plates again after this many frames at the soonest (its plates move "
        "with its track meanwhile).",
    )


@dataclass(frozen=True, slots=True)
class TrackBox:
    """A track as the video redactor needs it: id, person or vehicle, its box on this frame, fresh or predicted."""

    id: int
    person: bool
    box: Box
    detected: bool


@dataclass(frozen=True, slots=True)
class RedactedFrame:
    """One covered frame: never the raw pixels."""

    t: float
    ts_wall: float
    image: np.ndarray
    faces: int
    plates: int


@dataclass(slots=True)
class _Sighting:
    kind: Kind
    box: Box
    score: float
    frame: int
    t: float
    source: Source
    track: int | None = None
    rel: Box | None = None  # the box in fractions of its track's box, to move with the track
    rechecked: int | None = None  # the first later frame its source was looked at again


@dataclass(slots=True)
class _Pending:
    number: int
    t: float
    ts_wall: float
    image: np.ndarray
    tracks: dict[int, TrackBox] = field(default_factory=dict)


def _relative(box: Box, to: Box) -> Box:
    w, h = max(1e-6, to[2] - to[0]), max(1e-6, to[3] - to[1])
    return ((box[0] - to[0]) / w, (box[1] - to[1]) / h, (box[2] - to[0]) / w, (box[3] - to[1]) / h)


def _absolute(rel: Box, to: Box) -> Box:
    w, h = to[2] - to[0], to[3] - to[1]
    return (to[0] + rel[0] * w, to[1] + rel[1] * h, to[0] + rel[2] * w, to[1] + rel[3] * h)


def _contains_box(outer: tuple[int, int, int, int], box: Box) -> bool:
    return outer[0] <= (box[0] + box[2]) / 2 < outer[2] and outer[1] <= (box[1] + box[3]) / 2 < outer[3]


def _contains(outer: Box, point: tuple[float, float]) -> bool:
    return outer[0] <= point[0] <= outer[2] and outer[1] <= point[1] <= outer[3]


class VideoRedactor:
    """Covers every frame pushed to it, ``lookahead_frames`` later; one per camera, not thread-safe.

    Runs on the inference pool: :meth:`push` does the model passes.
    """

    def __init__(self, redactor: Redactor, config: VideoRedactionConfig) -> None:
        self.redactor = redactor
        self.config = config
        self._pending: deque[_Pending] = deque()
        self._sightings: list[_Sighting] = []
        self._tiles: list[Tile] = []
        self._size: tuple[int, int] | None = None
        self._tile_scanned: dict[int, int] = {}
        self._tile_dirty: set[int] = set()
        self._tile_credit = 0.0
        self._plate_searched: dict[int, int] = {}
        self._number = 0
        self.scans = {"whole": 0, "heads": 0, "motion": 0, "tiles": 0, "plates": 0}

    @property
    def pending_bytes(self) -> int:
        return sum(p.image.nbytes for p in self._pending)

    def reset(self) -> None:
        """Forget everything, waiting frames included (a new scene, or redaction failed)."""
        self._pending.clear()
        self._sightings.clear()
        self._tile_scanned.clear()
        self._tile_dirty = {t.index for t in self._tiles}
        self._plate_searched.clear()
        self._tile_credit = 0.0

    def push(
        self, image: np.ndarray, t: float, ts_wall: float, tracks: Sequence[TrackBox], moving: Sequence[Box] | None
    ) -> list[RedactedFrame]:
        """Take a raw frame; the frames now ready, covered, oldest first. ``moving`` is where motion was
        (None: anywhere)."""
        try:
            self.redactor.check()
            return self._push(image, t, ts_wall, tracks, moving)
        except Exception as exc:
            self.reset()
            if isinstance(exc, RedactionUnavailable):
                raise
            raise RedactionUnavailable(f"redaction failed: {type(exc).__name__}: {exc}") from exc

    def flush(self) -> list[RedactedFrame]:
        """Cover and hand over every waiting frame (the video ended)."""
        out = [self._cover(p) for p in self._pending]
        self._pending.clear()
        return out

    # ------------------------------------------------------------------ passes

    def _push(
        self, image: np.ndarray, t: float, ts_wall: float, tracks: Sequence[TrackBox], moving: Sequence[Box] | None
    ) -> list[RedactedFrame]:
        height, width = image.shape[:2]
        if self._size != (width, height):
            self._size = (width, height)
            self._tiles = tile_grid(width, height, self.redactor.config.small_faces)
            self.reset()
        n = self._number
        self._number += 1
        frame = _Pending(n, t, ts_wall, image, {tr.id: tr for tr in tracks})
        self._pending.append(frame)
        found: list[tuple[Find, Source, TrackBox | None]] = []
        if n % self.config.whole_frame_every == 0:
            found += [(f, _WHOLE, None) for f in self.redactor.whole_frame_faces(image)]
            self._looked(_WHOLE, n)
            self.scans["whole"] += 1
        found += self._heads(image, [tr for tr in tracks if tr.person and tr.detected], n)
        found += self._plates(image, [tr for tr in tracks if not tr.person and tr.detected], n)
        found += self._moving_faces(image, moving)
        found += self._small_faces(image, moving, n)
        for (kind, box, score), source, track in found:
            self._remember(kind, box, score, n, t, source, track, tracks)
        live = {tr.id for tr in tracks}
        for s in self._sightings:
            if s.source[0] in ("head", "plate") and s.source[1] not in live and s.rechecked is None:
                s.rechecked = n  # its track ended: nothing will look there again, so hold it for hold_frames
        self._expire(n)
        ready: list[RedactedFrame] = []
        while self._pending and self._pending[0].number <= n - self.config.lookahead_frames:
            ready.append(self._cover(self._pending.popleft()))
        return ready

    def _heads(self, image: np.ndarray, people: list[TrackBox], n: int) -> list[tuple[Find, Source, TrackBox | None]]:
        if not people:
            return []
        found = self.redactor.head_faces(image, [p.box for p in people])
        self.scans["heads"] += 1
        out: list[tuple[Find, Source, TrackBox | None]] = []
        for person in people:
            self._looked(("head", person.id), n)
        for f in found:
            centre = ((f[1][0] + f[1][2]) / 2, (f[1][1] + f[1][3]) / 2)
            owner = next((p for p in people if _contains(p.box, centre)), None)
            out.append((f, ("head", owner.id if owner else -1), owner))
        return out

    def _plates(
        self, image: np.ndarray, vehicles: list[TrackBox], n: int
    ) -> list[tuple[Find, Source, TrackBox | None]]:
        due = [v for v in vehicles if n - self._plate_searched.get(v.id, -(10**9)) >= self.config.plate_recheck_frames]
        chosen = sorted(due, key=lambda v: self._plate_searched.get(v.id, -1))[: self.config.plates_per_frame]
        out: list[tuple[Find, Source, TrackBox | None]] = []
        for vehicle in chosen:
            self._plate_searched[vehicle.id] = n
            self._looked(("plate", vehicle.id), n)
            out += [(f, ("plate", vehicle.id), vehicle) for f in self.redactor.plates_in(image, [vehicle.box])]
            self.scans["plates"] += 1
        return out

    def _moving_faces(self, image: np.ndarray, moving: Sequence[Box] | None) -> list[tuple[Find, Source, None]]:
        """Faces in the small moving blobs, each blob enlarged into a square of one of ``_MOTION_CROPS_PX``."""
        small = self.redactor.config.small_faces
        limit = self.config.motion_crops_per_frame
        if not small.enabled or moving is None or limit == 0:
            return []
        height, width = image.shape[:2]
        squares: dict[int, list[tuple[int, int, int]]] = {}
        chosen = 0
        # Smallest first: the smaller the blob, the smaller the faces it can hold, and the fewer other passes see them.
        for b in sorted(moving, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])):
            side = int(np.ceil(max(b[2] - b[0], b[3] - b[1]) * (1 + 2 * _BLOB_MARGIN)))
            net = next((px for px in _MOTION_CROPS_PX if side * small.upscale <= px), None)
            cost = (net // _MOTION_CROPS_PX[0]) ** 2 if net is not None else 0
            if net is None or chosen + cost > limit:
                continue
            side = min(max(side, 16), width, height)
            x = int(min(max(0, (b[0] + b[2] - side) / 2), width - side))
            y = int(min(max(0, (b[1] + b[3] - side) / 2), height - side))
            squares.setdefault(net, []).append((x, y, side))
            chosen += cost
        out: list[tuple[Find, Source, None]] = []
        for net, group in squares.items():
            crops = [
                cv2.resize(image[y : y + s, x : x + s], (net, net), interpolation=cv2.INTER_LINEAR) for x, y, s in group
            ]
            self.scans["motion"] += 1
            for (x, y, side), faces in zip(group, self.redactor.faces_in_crops(crops), strict=True):
                for kind, box, score in faces:
                    placed = offset(box, x, y, net / side)
                    # Looked at again when its tile is scanned (or when its blob is searched on the next frame).
                    tile = next((t for t in self._tiles if _contains_box(t.box, placed)), None)
                    source: Source = ("tile", tile.index) if tile is not None else _WHOLE
                    out.append(((kind, placed, score), source, None))
        return out

    def _small_faces(self, image: np.ndarray, moving: Sequence[Box] | None, n: int) -> list[tuple[Find, Source, None]]:
        if not self.redactor.config.small_faces.enabled or not self._tiles:
            return []
        self._tile_dirty.update(t.index for t in touched(self._tiles, moving))
        self._tile_credit = min(self._tile_credit + self.config.tiles_per_frame, max(1.0, self.config.tiles_per_frame))
        count = min(int(self._tile_credit), len(self._tile_dirty))
        if count == 0:
            return []
        chosen = sorted(self._tile_dirty, key=lambda i: self._tile_scanned.get(i, -1))[:count]
        self._tile_credit -= count
        tiles = [self._tiles[i] for i in chosen]
        found = self.redactor.tile_faces(image, tiles)
        self.scans["tiles"] += len(tiles)
        for tile in tiles:
            self._tile_dirty.discard(tile.index)
            self._looked(("tile", tile.index), n)
        return [(f, ("tile", tile.index), None) for tile, f in found]

    # ------------------------------------------------------------------ what is covered

    def _looked(self, source: Source, n: int) -> None:
        for s in self._sightings:
            if s.source == source and s.rechecked is None and s.frame < n:
                s.rechecked = n
        if source[0] == "tile":
            self._tile_scanned[source[1]] = n

    def _remember(
        self,
        kind: Kind,
        box: Box,
        score: float,
        n: int,
        t: float,
        source: Source,
        track: TrackBox | None,
        tracks: Sequence[TrackBox],
    ) -> None:
        if track is None and kind == "face":
            # A face on a person the detector follows moves with that person.
            centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            track = next((tr for tr in tracks if tr.person and _contains(tr.box, centre)), None)
        rel = _relative(box, track.box) if track is not None else None
        self._sightings.append(_Sighting(kind, box, score, n, t, source, track.id if track else None, rel))

    def _expire(self, n: int) -> None:
        oldest = self._pending[0].number if self._pending else n
        self._sightings = [s for s in self._sightings if self._last_frame(s) >= oldest]

    def _last_frame(self, s: _Sighting) -> float:
        until = s.frame + self.config.hold_frames
        return max(until, s.rechecked) if s.rechecked is not None else float("inf")

    def _cover(self, frame: _Pending) -> RedactedFrame:
        height, width = frame.image.shape[:2]
        c = self.config
        found: list[Find] = []
        for s in self._sightings:
            if not s.frame - c.lookahead_frames <= frame.number <= self._last_frame(s):
                continue
            track = frame.tracks.get(s.track) if s.track is not None else None
            if track is not None and s.rel is not None:
                found.append((s.kind, clip(_absolute(s.rel, track.box), width, height), s.score))
                if s.kind == "plate":
                    continue
                # Also where it was, grown: a track's predicted box can be a few pixels off its person.
            grow = min(_MAX_GROWTH, c.face_speed * abs(frame.t - s.t)) if s.kind == "face" else 0.0
            # Grown by the whole face's height: a box found shorter than a face is tall for its width is part of one.
            h = max(s.box[3] - s.box[1], _FACE_ASPECT * (s.box[2] - s.box[0]))
            g = (s.box[0] - grow * h, s.box[1] - grow * h, s.box[2] + grow * h, s.box[3] + grow * h)
            found.append((s.kind, clip(g, width, height), s.score))
        heads = [expand(self._head(tr.box), c.head_margin, width, height) for tr in frame.tracks.values() if tr.person]
        redaction = self.redactor.cover(frame.image, found, heads)
        return RedactedFrame(frame.t, frame.ts_wall, redaction.image, redaction.count("face"), redaction.count("plate"))

    @staticmethod
    def _head(person: Box) -> Box:
        return (person[0], person[1], person[2], person[1] + _HEAD_SHARE * (person[3] - person[1]))
