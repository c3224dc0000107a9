"""The small-face pass: a band of the frame cut into overlapping tiles, each enlarged for the face model.

CenterFace finds a face once it is about 20 px high in its input; the
whole-frame pass sees the frame scaled to ``face_max_side``, so at 1920x1080 a
face needs about 60 px to be found there, and at 640x480 about 16 px. The
tiles give the model every part of the band ``upscale`` times larger (a 10 px
face becomes 20 px), at a cost that grows with the band's area times
``upscale`` squared: the band is where people can be, and the overlap between
tiles is as large as the biggest face the tiles must see whole.

Tiles all have one size, so a set of them goes through the model in one batched
call; the still redactor scans every tile of a frame, the video redactor a few
per frame (:mod:`gateway.vision.videoredact`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.detection import Box, Detection, FaceDetector, offset


class SmallFaceConfig(BaseModel):
    """The tiled, enlarged face pass for faces too small for the whole-frame pass."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        True,
        description="Run the tiled pass (off: faces under about 16-60 px, by resolution, "
        "are found only on people the person detector finds).",
    )
    band: tuple[float, float] = Field(
        (0.0, 1.0),
        description="Top and bottom of the horizontal band of the frame that is tiled, as fractions of its height "
        "(where people can be seen small: the far side of the street); cost grows with its height.",
    )
    upscale: float = Field(
        2.0,
        ge=1.0,
        le=4.0,
        description="How much each tile is enlarged for the face model (2: 10 px faces are seen "
        "at 20 px, about the least CenterFace finds).",
    )
    tile_px: int = Field(
        384, ge=128, le=1024, multiple_of=32, description="Side of a tile as the face model sees it (after enlarging)."
    )
    overlap: float = Field(
        0.25,
        ge=0.0,
        le=0.5,
        description="Overlap of neighbouring tiles, as a fraction of a tile: a face up to this size is whole in "
        "some tile (larger ones are the whole-frame and person passes' job).",
    )

    rescan_s: float = Field(
        30.0,
        gt=0,
        description="On a camera, a tile's last scan is reused for snapshots for at most this long while the motion "
        "gate sees nothing move in it.",
    )

    @field_validator("band")
    @classmethod
    def _ordered(cls, band: tuple[float, float]) -> tuple[float, float]:
        top, bottom = band
        if not 0.0 <= top < bottom <= 1.0:
            raise ValueError(f"band {list(band)} must be [top, bottom] with 0 <= top < bottom <= 1")
        return band


@dataclass(frozen=True, slots=True)
class Tile:
    """One tile in frame pixels (integer bounds); ``index`` is its place in the grid."""

    index: int
    box: tuple[int, int, int, int]


def tile_grid(width: int, height: int, config: SmallFaceConfig) -> list[Tile]:
    """Tiles of one size covering the band of a ``width`` x ``height`` frame, overlapping by ``config.overlap``."""
    side = max(16, int(round(config.tile_px / config.upscale)))
    top = int(np.floor(config.band[0] * height))
    bottom = int(np.ceil(config.band[1] * height))
    tw, th = min(side, width), min(side, bottom - top)
    stride_x = max(1, int(tw * (1 - config.overlap)))
    stride_y = max(1, int(th * (1 - config.overlap)))

    def starts(begin: int, end: int, size: int, stride: int) -> list[int]:
        out = list(range(begin, max(begin, end - size) + 1, stride))
        if out[-1] + size < end:
            out.append(end - size)  # the last tile sits on the edge rather than past it
        return out

    xs = starts(0, width, tw, stride_x)
    ys = starts(top, bottom, th, stride_y)
    return [Tile(i, (x, y, x + tw, y + th)) for i, (y, x) in enumerate((y, x) for y in ys for x in xs)]


def scan_tiles(
    detector: FaceDetector, image: np.ndarray, tiles: Sequence[Tile], upscale: float, threshold: float
) -> list[tuple[Tile, Detection]]:
    """Faces in ``tiles`` of ``image`` (in frame pixels), each found by enlarging its tile ``upscale`` times.

    Tiles of other sizes than the first (a frame smaller than a tile) are scanned in a batch of their own.
    """
    groups: dict[tuple[int, int], list[Tile]] = {}
    for tile in tiles:
        x1, y1, x2, y2 = tile.box
        groups.setdefault((x2 - x1, y2 - y1), []).append(tile)
    found: list[tuple[Tile, Detection]] = []
    for (w, h), group in groups.items():
        size = (int(round(w * upscale)), int(round(h * upscale)))
        crops = [
            cv2.resize(image[t.box[1] : t.box[3], t.box[0] : t.box[2]], size, interpolation=cv2.INTER_LINEAR)
            for t in group
        ]
        for tile, faces in zip(group, detector.detect_batch(crops, threshold), strict=True):
            sx = w / size[0]
            found += [
                (tile, Detection(d.label, d.score, offset(d.box, tile.box[0], tile.box[1], 1 / sx))) for d in faces
            ]
    return found


def touched(tiles: Sequence[Tile], regions: Sequence[Box] | None) -> list[Tile]:
    """The tiles that overlap any of ``regions`` (None: all of them)."""
    if regions is None:
        return list(tiles)
    return [
        t
        for t in tiles
        if any(r[0] < t.box[2] and t.box[0] < r[2] and r[1] < t.box[3] and t.box[1] < r[3] for r in regions)
    ]


class TileMemory:
    """What the last scan of each tile found, reused while nothing moved there.

    A tile is scanned again when motion touched it since its last scan, or
    when that scan is older than ``max_age_s`` (motion the gate is too coarse
    to see, at 160 px wide, still gets looked at). A quiet scene then costs
    nothing, a busy one as much as the area that moves.
    """

    def __init__(self, config: SmallFaceConfig) -> None:
        self.config = config
        self.max_age_s = config.rescan_s
        self.tiles: list[Tile] = []
        self._size: tuple[int, int] | None = None
        self._found: dict[int, list[Detection]] = {}
        self._scanned: dict[int, float] = {}
        self._dirty: set[int] = set()

    def touch(self, regions: Sequence[Box] | None) -> None:
        """Motion in ``regions`` (frame pixels; None: anywhere)."""
        self._dirty.update(t.index for t in touched(self.tiles, regions))

    def due(self, width: int, height: int, now: float) -> list[Tile]:
        """The tiles to scan now on a ``width`` x ``height`` frame."""
        if self._size != (width, height):
            self._size = (width, height)
            self.tiles = tile_grid(width, height, self.config)
            self._found.clear()
            self._scanned.clear()
            self._dirty = {t.index for t in self.tiles}
        return [
            t
            for t in self.tiles
            if t.index in self._dirty or now - self._scanned.get(t.index, -float("inf")) > self.max_age_s
        ]

    def store(self, scanned: Sequence[Tile], found: Sequence[tuple[Tile, Detection]], now: float) -> None:
        for tile in scanned:
            self._found[tile.index] = []
            self._scanned[tile.index] = now
            self._dirty.discard(tile.index)
        for tile, detection in found:
            self._found[tile.index].append(detection)

    def found(self) -> list[Detection]:
        return [d for ds in self._found.values() for d in ds]
