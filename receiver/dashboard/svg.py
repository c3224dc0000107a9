"""Line charts drawn on the server: values per hour become SVG coordinates for a template.

No charting library and no script: the geometry is computed here and the template writes it
as ``<polyline>``, ``<circle>`` and ``<text>`` elements (escaped like any other value). Series
beyond ``MAX_SERIES`` (the largest kept) are summed into "other" when they are counts, and
left out (said so in the note) when they are measurements, which do not add up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

WIDTH = 720
HEIGHT = 260
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 14, 30
MAX_SERIES = 6
HOUR = 3600


@dataclass(frozen=True, slots=True)
class Tick:
    at: float  # pixels along its axis
    label: str


@dataclass(frozen=True, slots=True)
class Dot:
    x: float
    y: float
    title: str


@dataclass(frozen=True, slots=True)
class Line:
    name: str
    css: str  # s0..s5: its colour in dashboard.css
    points: str  # "x,y x,y ..." for <polyline>
    dots: list[Dot]


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    unit: str
    width: int
    height: int
    lines: list[Line]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    left: int
    right: int  # the x of the plot's right edge
    top: int
    bottom: int  # the y of the plot's bottom edge (its zero)
    note: str  # what the chart leaves out, if anything

    @property
    def empty(self) -> bool:
        return not self.lines


def nice_ceiling(value: float) -> tuple[float, int]:
    """The top of the value axis, the smallest of 1, 2, 4, 5 times a power of ten that is at least
    ``value`` (1 for nothing), and how many intervals divide it into round steps."""
    if value <= 0:
        return 1.0, 4
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 4, 5, 10):
        if step * power >= value * (1 - 1e-12):
            return step * power, 5 if step in (5, 10) else 4
    return 10 * power, 5


def _label(value: float) -> str:
    return f"{value:g}" if value < 10_000 else f"{value / 1000:g}k"


def _hour_label(hour: int, span_h: int) -> str:
    fmt = "%H:%M" if span_h <= 48 else "%m-%d"
    return time.strftime(fmt, time.gmtime(hour))


def line_chart(
    title: str,
    unit: str,
    series: Mapping[str, Mapping[int, float]],
    since: int,
    until: int,
    additive: bool,
) -> Chart:
    """``series``: name -> {hour (epoch seconds): value} over the hours [since, until)."""
    ranked = sorted(series.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    note = ""
    if len(ranked) <= MAX_SERIES:
        kept = dict(ranked)
    elif additive:
        kept = dict(ranked[: MAX_SERIES - 1])
        other: dict[int, float] = {}
        for _, values in ranked[MAX_SERIES - 1 :]:
            for hour, value in values.items():
                other[hour] = other.get(hour, 0.0) + value
        kept["other"] = other
        note = f"{len(ranked) - MAX_SERIES + 1} smaller series summed as 'other'"
    else:
        kept = dict(ranked[:MAX_SERIES])
        note = f"{len(ranked) - MAX_SERIES} more not drawn: narrow by pole or tag"
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    span_h = max(1, (until - since) // HOUR)
    highest = max((v for values in kept.values() for v in values.values()), default=0.0)
    top_value, intervals = nice_ceiling(max(highest, 4.0) if additive else highest)  # counts: whole steps

    def x_of(hour: int) -> float:
        # Each hour is drawn at its middle.
        return round(LEFT + plot_w * ((hour - since) / HOUR + 0.5) / span_h, 1)

    def y_of(value: float) -> float:
        return round(TOP + plot_h * (1 - value / top_value), 1)

    lines = []
    for n, (name, values) in enumerate(kept.items()):
        hours = sorted(h for h in values if since <= h < until)
        dots = [Dot(x_of(h), y_of(values[h]), f"{name} {_hour_label(h, 1)}: {values[h]:g} {unit}") for h in hours]
        lines.append(Line(name, f"s{n}", " ".join(f"{d.x},{d.y}" for d in dots), dots))
    x_ticks = [Tick(x_of(h), _hour_label(h, span_h)) for h in range(since, until, HOUR) if _ticked(h, since, span_h)]
    y_ticks = [Tick(y_of(top_value * i / intervals), _label(top_value * i / intervals)) for i in range(intervals + 1)]
    return Chart(title, unit, WIDTH, HEIGHT, lines, x_ticks, y_ticks, LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM, note)


def _ticked(hour: int, since: int, span_h: int) -> bool:
    """About eight labels along the time axis: every few hours, or every few midnights past two days."""
    if span_h <= 48:
        return ((hour - since) // HOUR) % math.ceil(span_h / 8) == 0
    return hour % 86400 == 0 and (hour // 86400) % math.ceil(span_h / 24 / 8) == 0


def by_series(rows: Sequence[tuple[str, int, float]]) -> dict[str, dict[int, float]]:
    """(series name, hour, value) rows as name -> {hour: value}."""
    out: dict[str, dict[int, float]] = {}
    for name, hour, value in rows:
        out.setdefault(name, {})[hour] = value
    return out
