"""Redaction of faces and plates, before any frame is encoded.

The detectors look for faces on the whole frame (the larger faces), enlarged
in the upper part of every person box (all heads of a frame in one batched
call) and in enlarged tiles of a band of the frame (:mod:`models.smallfaces`:
faces down to 10 px, also of people the person detector misses), and for plate
candidates in every vehicle box. Finds of one object by several passes are
merged into one box, so that it is covered once. Two passes over
what they find: the first covers, with a margin, everything scoring at least
the first-pass thresholds; the second goes over everything down to the lower
second-pass thresholds and covers what the first left uncovered. (The
detectors run once, at the lower threshold: running them again on the
redacted image would cost twice as much and find nothing new outside the
covered regions, while CenterFace keeps firing on the covered heads.) A
covered region keeps no identifiable detail: a pixelation to at most 8x8
blocks, a blur whose kernel spans the whole box, or a fill.

If a detector is missing or fails, :meth:`Redactor.redact` raises
:class:`RedactionUnavailable` and the caller keeps no image: redaction fails
closed. :func:`residual_detail` is the measure that tells a redaction from a
light blur.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.detection import Box, FaceDetector, clip, covered_fraction, expand, offset, to_pixels
from models.plates import PlateFinder
from models.smallfaces import SmallFaceConfig, Tile, TileMemory, scan_tiles, tile_grid

Method = Literal["pixelate", "blur", "fill"]
Kind = Literal["face", "plate"]

_MIN_PERSON_PX = 24  # person boxes shorter than this hold a face of under 4 px: nothing to identify
_MIN_VEHICLE_PX = 24
_COVERED = 0.9  # a second-pass find this much under earlier redactions is already handled
# A pixelation block is never smaller than this: 6x6 blocks over an 18 px region (a 10 px face and its margin)
# would keep about every pixel the face had.
_MIN_BLOCK_PX = 8
_MIN_MARGIN_PX = 4

REDACTED_BELOW = 0.3
"""A region whose :func:`residual_detail` against the original is below this counts as redacted."""


class RedactionConfig(BaseModel):
    """How faces and plates are found and covered before a snapshot is encoded."""

    model_config = ConfigDict(extra="forbid")

    face_threshold: float = Field(0.5, gt=0, lt=1, description="Face detector score for the first pass.")
    face_second_pass_threshold: float = Field(
        0.25, gt=0, lt=1, description="Face detector score for the second pass (what the first left uncovered)."
    )
    plate_threshold: float = Field(
        0.5, gt=0, lt=1, description="Text detector score for a plate candidate, first pass."
    )
    plate_second_pass_threshold: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="Text detector score for a plate candidate, second pass (what the first left uncovered).",
    )
    margin: float = Field(
        0.25, ge=0.1, le=1.0, description="Margin added on every side of a box, as a fraction of its size."
    )
    face_method: Method = Field("pixelate", description="How faces are covered: 'pixelate', 'blur' or 'fill'.")
    plate_method: Method = Field(
        "fill",
        description="How plates are covered; 'fill' by default, since even 8 blocks across a plate "
        "would keep one average per character.",
    )
    pixelate_blocks: int = Field(
        6,
        ge=2,
        le=8,
        description="Blocks across each side of a pixelated region (at most 8; fewer in a small region, where a "
        "block is never under 8 px).",
    )
    head_crop_px: int = Field(
        96,
        ge=64,
        le=640,
        multiple_of=32,
        description="Side of the square the upper part of a person box is scaled into for the face pass inside it.",
    )
    face_max_side: int = Field(
        640,
        ge=320,
        le=4096,
        description="Longest side of the frame given to the whole-frame face pass (cost and memory grow with "
        "its square; small faces are found by the person and tile passes).",
    )
    small_faces: SmallFaceConfig = Field(
        default_factory=SmallFaceConfig, description="The tiled, enlarged pass for faces too small for the others."
    )


@dataclass(frozen=True, slots=True)
class RedactedRegion:
    """One covered region of a snapshot, in image pixels (margin included)."""

    kind: Kind
    box: Box
    score: float
    pass_no: int


@dataclass(frozen=True, slots=True)
class Redaction:
    """A redacted copy of a frame and what was covered."""

    image: np.ndarray
    regions: tuple[RedactedRegion, ...]

    def count(self, kind: Kind) -> int:
        return sum(1 for r in self.regions if r.kind == kind)


class RedactionUnavailable(Exception):
    """Redaction cannot be done (a model is missing or failed): keep no image."""


def cover(image: np.ndarray, box: Box, method: Method, blocks: int) -> None:
    """Make the region unrecognisable, in place."""
    x1, y1, x2, y2 = to_pixels(box)
    region = image[y1:y2, x1:x2]
    h, w = region.shape[:2]
    if h == 0 or w == 0:
        return
    if method == "fill":
        region[...] = np.array(cv2.mean(region)[: region.shape[2] if region.ndim == 3 else 1], region.dtype)
    elif method == "pixelate":
        n = max(1, min(blocks, min(w, h) // _MIN_BLOCK_PX))
        small = cv2.resize(region, (n, n), interpolation=cv2.INTER_AREA)
        region[...] = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST).reshape(region.shape)
    else:
        k = max(w, h) | 1
        region[...] = cv2.GaussianBlur(region, (k, k), sigmaX=k / 3, borderType=cv2.BORDER_REPLICATE).reshape(
            region.shape
        )


def residual_detail(original: np.ndarray, redacted: np.ndarray) -> float:
    """How much identifying detail of ``original`` survives in ``redacted`` (same region, same size).

    Both are brought to 64 px high and band-passed (a difference of Gaussians,
    sigma 0.7 and 1.5 px: about 15 to 30 cycles per region height, the fine
    detail that tells one face or one character from another); the result is
    the Pearson correlation of the two. On the test faces an untouched or
    JPEG-compressed region scores above 0.95 and a light blur (sigma 1/40 of
    the face) above 0.7, while each redaction method scores under 0.3:
    :data:`REDACTED_BELOW` is the bar.
    """

    def band(img: np.ndarray) -> np.ndarray:
        grey = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        h, w = grey.shape
        size = (max(16, int(round(64 * w / h))), 64)
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA).astype(np.float32)
        return cv2.GaussianBlur(grey, (0, 0), 0.7) - cv2.GaussianBlur(grey, (0, 0), 1.5)

    a, b = band(original).ravel(), band(redacted).ravel()
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 1e-6 else 0.0


def _letterbox(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """``image`` scaled to fit a ``side`` x ``side`` black square (top-left), and the scale used.

    One input size for every crop keeps the face model's memory plan fixed.
    """
    scale = side / max(image.shape[0], image.shape[1])
    w, h = max(1, int(image.shape[1] * scale)), max(1, int(image.shape[0] * scale))
    canvas = np.zeros((side, side, *image.shape[2:]), image.dtype)
    canvas[:h, :w] = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    return canvas, scale


Find = tuple[Kind, Box, float]
"""What a detector found for redaction: its kind, its box in frame pixels and its score."""


class Redactor:
    """Finds and covers faces and plates in two passes; fails closed.

    The finders are public so that the video redactor can schedule them over
    frames; :meth:`redact` runs them all on one frame.
    """

    def __init__(
        self,
        faces: FaceDetector | None,
        plates: PlateFinder | None,
        config: RedactionConfig | None = None,
        unavailable: str | None = None,
    ) -> None:
        self.faces = faces
        self.plates = plates
        self.config = config or RedactionConfig()
        missing = [name for name, part in (("face detector", faces), ("plate detector", plates)) if part is None]
        self.unavailable = unavailable or (f"no {' and no '.join(missing)}" if missing else None)

    @property
    def available(self) -> bool:
        return self.unavailable is None

    def redact(
        self,
        image: np.ndarray,
        people: Sequence[Box],
        vehicles: Sequence[Box],
        memory: TileMemory | None = None,
        now: float = 0.0,
    ) -> Redaction:
        """A redacted copy of ``image``; ``people`` and ``vehicles`` are the detector's boxes in it.

        With a camera's ``memory``, only the tiles it says are due (motion, age at ``now``) are scanned
        and the others' last finds are covered; without, every tile of the band is scanned.
        """
        self.check()
        c = self.config
        try:
            found = self.whole_frame_faces(image) + self.head_faces(image, people)
            if c.small_faces.enabled:
                height, width = image.shape[:2]
                if memory is None:
                    found += [f for _, f in self.tile_faces(image, tile_grid(width, height, c.small_faces))]
                else:
                    assert self.faces is not None
                    due = memory.due(width, height, now)
                    t = c.face_second_pass_threshold
                    memory.store(due, scan_tiles(self.faces, image, due, c.small_faces.upscale, t), now)
                    found += [("face", d.box, d.score) for d in memory.found()]
            found += self.plates_in(image, vehicles)
        except Exception as exc:
            raise RedactionUnavailable(f"redaction failed: {type(exc).__name__}: {exc}") from exc
        return self.cover(image, found)

    def check(self) -> None:
        """Raise :class:`RedactionUnavailable` when a model is missing."""
        if self.unavailable is not None:
            raise RedactionUnavailable(self.unavailable)

    def cover(self, image: np.ndarray, found: Sequence[Find], extra: Sequence[Box] = ()) -> Redaction:
        """A copy of ``image`` with ``found`` covered in two passes, and ``extra`` (already margined) as faces."""
        c = self.config
        out = image.copy()
        regions: list[RedactedRegion] = []
        height, width = out.shape[:2]
        found = merge_overlapping(found)
        first = [f for f in found if f[2] >= (c.face_threshold if f[0] == "face" else c.plate_threshold)]
        for pass_no, finds in ((1, first), (2, [f for f in found if f not in first])):
            done = [r.box for r in regions]
            for kind, box, score in finds:
                if pass_no > 1 and covered_fraction(box, done) >= _COVERED:
                    continue
                region = _with_margin(box, c.margin, width, height)
                cover(out, region, c.face_method if kind == "face" else c.plate_method, c.pixelate_blocks)
                regions.append(RedactedRegion(kind, region, score, pass_no))
        for box in extra:
            cover(out, box, c.face_method, c.pixelate_blocks)
            regions.append(RedactedRegion("face", box, 0.0, 0))
        return Redaction(out, tuple(regions))

    # The finders report down to the second-pass thresholds; exceptions propagate (the caller fails closed).

    def whole_frame_faces(self, image: np.ndarray) -> list[Find]:
        """Faces on the whole frame, scaled to at most ``face_max_side``: the larger faces."""
        assert self.faces is not None
        return [("face", d.box, d.score) for d in self.faces.detect(image, self.config.face_second_pass_threshold)]

    def head_faces(self, image: np.ndarray, people: Sequence[Box]) -> list[Find]:
        """Faces in the upper part of every person box, all heads enlarged to one size in one batched call."""
        assert self.faces is not None
        height, width = image.shape[:2]
        crops: list[np.ndarray] = []
        places: list[tuple[int, int, float]] = []
        for person in people:
            if person[3] - person[1] < _MIN_PERSON_PX:
                continue
            x1, y1, x2, y2 = to_pixels(expand(head_of(person), 0.15, width, height))
            if x2 - x1 < 4 or y2 - y1 < 4:
                continue
            crop, scale = _letterbox(image[y1:y2, x1:x2], self.config.head_crop_px)
            crops.append(crop)
            places.append((x1, y1, scale))
        found: list[Find] = []
        for (x1, y1, scale), faces in zip(
            places, self.faces.detect_batch(crops, self.config.face_second_pass_threshold), strict=True
        ):
            found += [("face", offset(d.box, x1, y1, scale), d.score) for d in faces]
        return found

    def faces_in_crops(self, crops: Sequence[np.ndarray]) -> list[list[Find]]:
        """Faces in each of ``crops`` (one size, already enlarged), in the crops' pixels, one batched call."""
        assert self.faces is not None
        found = self.faces.detect_batch(crops, self.config.face_second_pass_threshold)
        return [[("face", d.box, d.score) for d in faces] for faces in found]

    def tile_faces(self, image: np.ndarray, tiles: Sequence[Tile]) -> list[tuple[Tile, Find]]:
        """Small faces in ``tiles`` of the band, enlarged ``small_faces.upscale`` times, with the tile of each."""
        assert self.faces is not None
        c = self.config
        found = scan_tiles(self.faces, image, tiles, c.small_faces.upscale, c.face_second_pass_threshold)
        return [(tile, ("face", d.box, d.score)) for tile, d in found]

    def plates_in(self, image: np.ndarray, vehicles: Sequence[Box]) -> list[Find]:
        """Plate candidates in every vehicle box large enough to hold a legible one."""
        assert self.plates is not None
        found: list[Find] = []
        for vehicle in vehicles:
            if min(vehicle[2] - vehicle[0], vehicle[3] - vehicle[1]) < _MIN_VEHICLE_PX:
                continue
            found += [
                ("plate", p.box, p.score)
                for p in self.plates.find(image, vehicle, self.config.plate_second_pass_threshold)
            ]
        return found


def _with_margin(box: Box, margin: float, width: int, height: int) -> Box:
    """``box`` grown by ``margin`` of its size, and by at least ``_MIN_MARGIN_PX`` on every side: a detector's box
    of a 10 px face is off by a pixel or two, which is a fifth of the face."""
    dx = max((box[2] - box[0]) * margin, _MIN_MARGIN_PX)
    dy = max((box[3] - box[1]) * margin, _MIN_MARGIN_PX)
    return clip((box[0] - dx, box[1] - dy, box[2] + dx, box[3] + dy), width, height)


def merge_overlapping(found: Sequence[Find], min_iou: float = 0.3) -> list[Find]:
    """One find per object: finds of one kind that overlap become their union, with the best score.

    Several passes find the same face with slightly different boxes; covered
    one by one, their pixelation grids would cross and draw new edges over it.
    Each find, best first, joins the first union it overlaps by ``min_iou``. A
    video frame carries a hundred finds, so the overlap is worked out inline,
    disjoint boxes first out.
    """
    merged: list[Find] = []
    for kind, box, score in sorted(found, key=lambda f: -f[2]):
        x1, y1, x2, y2 = box
        own = max(0.0, x2 - x1) * max(0.0, y2 - y1)
        for i, (k, b, s) in enumerate(merged):
            if k != kind:
                continue
            iw = min(b[2], x2) - max(b[0], x1)
            if iw <= 0:
                continue
            ih = min(b[3], y2) - max(b[1], y1)
            if ih <= 0:
                continue
            inter = iw * ih
            if inter >= min_iou * ((b[2] - b[0]) * (b[3] - b[1]) + own - inter):
                merged[i] = (k, (min(b[0], x1), min(b[1], y1), max(b[2], x2), max(b[3], y2)), s)
                break
        else:
            merged.append((kind, box, score))
    return merged


def head_of(person: Box) -> Box:
    """The upper part of a person box, where the face is (standing, sitting or bent over)."""
    return (person[0], person[1], person[2], person[1] + 0.45 * (person[3] - person[1]))
