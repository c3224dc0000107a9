"""What the technicians' status page shows, formatted once, here.

The daemon gathers a raw status (numbers, for machines: ``/status.json`` carries
it as ``status``); this module turns it into display strings and table rows
(``view``). The server renders the first page from the view and the page's
script refreshes it from the same view, so formatting lives in one place.

Every formatter is total: whatever value it is handed (a timestamp of 1e20, NaN, an
integer too long to print) it returns text, so no stored value can break the page.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.status import PoleStatus

Cell = str | dict[str, str]
F = TypeVar("F", bound=Callable[..., str])
INVALID = "?"


def _total(formatter: F) -> F:
    """The formatter, answering ``?`` where it would have raised."""

    @functools.wraps(formatter)
    def total(*args: Any, **kwargs: Any) -> str:
        try:
            return formatter(*args, **kwargs)
        except Exception:
            return INVALID

    return total  # type: ignore[return-value]


@_total
def fmt_text(value: Any) -> str:
    return str(value)


@_total
def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@_total
def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


@_total
def fmt_ago(ts: float | None, now: float) -> str:
    return "never" if ts is None else f"{fmt_duration(max(0.0, now - ts))} ago"


@_total
def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "–"
    if not math.isfinite(ts):
        return INVALID
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


@_total
def fmt_counts(counts: dict[str, int] | None) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{fmt_text(k)} {fmt_text(v)}" for k, v in sorted(counts.items(), key=lambda kv: fmt_text(kv[0])))


@_total
def _summary(data: dict[str, Any], limit: int = 90) -> str:
    text = ", ".join(f"{fmt_text(k)}={fmt_text(v)}" for k, v in data.items() if not isinstance(v, (dict, list)))
    return text if len(text) <= limit else text[: limit - 1] + "…"


@_total
def _remote_config(pole: Any) -> str:
    """Applied and target remote configuration versions ("0": none), and why the target is not applied."""
    applied = pole.remote_config_version
    target = pole.remote_config_target
    text = f"applied {applied}" + (
        "" if target is None else ", in sync" if target == applied else f", receiver wants {target}"
    )
    return text + (f"; ERROR: {pole.remote_config_error}" if pole.remote_config_error else "")


def build_view(status: PoleStatus) -> dict[str, Any]:
    """Display strings (``text``), table rows (``tables``), image URLs (``images``) and state classes."""
    now = status.now
    pole = status.pole
    outbox = status.outbox
    uplink = status.uplink
    disk = status.disk
    location = pole.location
    text: dict[str, str] = {
        "pole_id": pole.id,
        "software_version": pole.software_version,
        "config_version": pole.config_version,
        "uptime": fmt_duration(pole.uptime_s),
        "location": f"{location.lat:.5f}, {location.lon:.5f} ({location.source})" if location else "unknown",
        "clock": pole.clock or "not checked (no GPS fix)",
        "outbox_depth": fmt_counts(outbox.depth),
        "outbox_total": str(status.backlog),
        "outbox_bytes": f"{fmt_bytes(outbox.bytes_used)} of {fmt_bytes(outbox.max_bytes)}",
        "outbox_oldest": fmt_duration(outbox.oldest_age_s) if outbox.oldest_age_s is not None else "empty",
        "outbox_evicted": fmt_counts(outbox.evicted),
        "outbox_dead": str(outbox.dead_letters),
        "outbox_file": f"{fmt_bytes(outbox.file_bytes)} on disk, durability {outbox.durability}",
        "outbox_written": (
            "not counted by this kernel"
            if outbox.written_bytes is None
            else f"{fmt_bytes(outbox.written_bytes)} since start, {fmt_duration(pole.uptime_s)} ago"
        ),
        "uplink_state": uplink.state,
        "uplink_last_success": fmt_ago(uplink.last_success, now),
        "uplink_last_error": (
            f"{uplink.last_error} ({fmt_ago(uplink.last_error_at, now)})" if uplink.last_error else "none"
        ),
        "uplink_backoff": fmt_duration(uplink.backoff_s) if uplink.backoff_s else "none",
        "uplink_eta": fmt_duration(uplink.eta_s) if uplink.eta_s is not None else "–",
        "uplink_batches": fmt_counts(uplink.batches),
        "uplink_sent": f"{uplink.events_sent} events, {fmt_bytes(uplink.bytes_sent)}",
        "uplink_remote_config": _remote_config(pole),
        "uplink_security": f"INSECURE: {uplink.warning}" if uplink.warning else "TLS or this machine",
        "disk_free": f"{fmt_bytes(disk.free_bytes)} free of {fmt_bytes(disk.total_bytes)}",
        "redactions": fmt_counts(status.redactions),
        "updated": fmt_time(now),
    }
    tables: dict[str, list[list[Cell]]] = {
        "cameras": [
            [
                c.name,
                c.state,
                f"{c.pipeline_fps:.1f} (reading {c.read_fps:.1f})",
                fmt_duration(c.last_frame_age_s) if c.last_frame_age_s is not None else "no frame yet",
                f"{c.frames_read} read, {c.frames_dropped} dropped",
                ", ".join(c.conditions) or "ok",
                c.last_error or "",
            ]
            for c in status.cameras
        ],
        "models": [
            [
                m.name,
                "loaded" if m.loaded else "MISSING",
                "–" if m.inference_ms_p50 is None else f"{m.inference_ms_p50:.1f} ms",
                str(m.calls),
            ]
            for m in status.models
        ],
        "sensors": [
            [
                s.name,
                s.kind,
                s.port,
                "connected" if s.connected else s.state,
                _summary(s.last_reading or {}) or "–",
                fmt_ago(s.last_reading_at, now),
                str(s.readings_total),
                fmt_counts(s.errors),
            ]
            for s in status.sensors
        ],
        "dead_letters": [[fmt_time(d.rejected_at), d.type, str(d.seq), d.reason] for d in status.dead_letters],
        "events": [
            [
                fmt_time(e.ts),
                e.type,
                e.priority,
                _summary(e.data),
                {"img": f"/thumbs/{e.id}.jpg"} if e.thumb else "",
            ]
            for e in status.recent_events
        ],
        "components": [
            [c.name, "running" if c.running else "restarting", str(c.restarts), c.last_error or ""]
            for c in status.components
        ],
    }
    snapshot_seq = status.snapshot_seq
    images = {"snapshot": f"/snapshot.jpg?seq={snapshot_seq}" if snapshot_seq is not None else ""}
    states = {
        "uplink_state": {"idle": "ok", "sending": "ok", "starting": "warn", "backoff": "warn"}.get(uplink.state, "bad"),
        "outbox_dead": "warn" if outbox.dead_letters else "ok",
        "uplink_security": "bad" if uplink.warning else "ok",
    }
    return {"text": text, "tables": tables, "images": images, "states": states}
