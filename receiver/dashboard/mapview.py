"""A map-like view of the poles without map tiles: their positions projected into an SVG box.

The projection is equirectangular around the fleet's mean latitude (longitudes shrink by its
cosine), which is true enough over a city; the box keeps the fleet's proportions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from receiver.store.base import PolePosition, PoleState

MAX_POLES = 5000  # drawn on one map; beyond, the map says how many it left out
WIDTH = 640
HEIGHT = 360
_PAD = 36
_EARTH_M_PER_DEG = 111_320.0


@dataclass(frozen=True, slots=True)
class MapPoint:
    pole_id: str
    label: str
    x: float
    y: float
    state: str  # "online", "offline" or "revoked"


@dataclass(frozen=True, slots=True)
class MapView:
    width: int
    height: int
    points: list[MapPoint]
    unplaced: int  # poles without a location
    more: bool  # poles beyond MAX_POLES were not drawn
    scale_px: float  # the length of the scale bar in pixels...
    scale_label: str  # ...and what it stands for on the ground


def pole_state_name(pole: PoleState | PolePosition, now: float, window_s: float) -> str:
    if pole.revoked_at is not None:
        return "revoked"
    return "online" if pole.online(now, window_s) else "offline"


def project(poles: Sequence[PolePosition], now: float, window_s: float) -> MapView:
    """Up to ``MAX_POLES`` of ``poles`` placed in the box (give one more to learn whether there were more)."""
    more = len(poles) > MAX_POLES
    poles = poles[:MAX_POLES]
    placed = [p for p in poles if p.lat is not None and p.lon is not None]
    if not placed:
        return MapView(WIDTH, HEIGHT, [], len(poles), more, 0.0, "")
    lats = [float(p.lat) for p in placed if p.lat is not None]
    lons = [float(p.lon) for p in placed if p.lon is not None]
    shrink = math.cos(math.radians(sum(lats) / len(lats)))
    xs = [lon * shrink for lon in lons]
    span_x = max(xs) - min(xs)
    span_y = max(lats) - min(lats)
    # Degrees (of latitude) per pixel: the larger span fills its side; one pole alone sits in the middle.
    per_px = max(span_x / (WIDTH - 2 * _PAD), span_y / (HEIGHT - 2 * _PAD), 1e-6)
    mid_x = (max(xs) + min(xs)) / 2
    mid_y = (max(lats) + min(lats)) / 2
    points = [
        MapPoint(
            pole.pole_id,
            pole.name or pole.pole_id,
            round(WIDTH / 2 + (x - mid_x) / per_px, 1),
            round(HEIGHT / 2 - (lat - mid_y) / per_px, 1),
            pole_state_name(pole, now, window_s),
        )
        for pole, x, lat in zip(placed, xs, lats, strict=True)
    ]
    scale_px, scale_label = _scale_bar(per_px * _EARTH_M_PER_DEG)
    return MapView(WIDTH, HEIGHT, points, len(poles) - len(placed), more, scale_px, scale_label)


def _scale_bar(metres_per_px: float) -> tuple[float, str]:
    """A round distance that draws between 60 and 150 pixels or so."""
    target = metres_per_px * 100
    step = 10 ** math.floor(math.log10(target))
    for mult in (1, 2, 5, 10):
        if step * mult >= target * 0.6:
            metres = step * mult
            break
    label = f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"
    return round(metres / metres_per_px, 1), label
