"""How the dashboard writes times, ages, sizes and JSON: Jinja2 filters, plain text (escaped by the templates)."""

from __future__ import annotations

import json
import time
from typing import Any


def utc(ts: float | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


def ago(ts: float | None, now: float | None = None) -> str:
    """How long ago ``ts`` was, in the largest unit that fits: "12 s ago", "3 min ago", "2 h ago", "4 d ago"."""
    if ts is None:
        return "never"
    return duration(max(0.0, (now or time.time()) - ts)) + " ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


FILTERS = {"utc": utc, "ago": ago, "duration": duration, "size": size, "json": pretty_json}
