"""``GET /poles/{pole_id}``: one pole. Its state and last status block, its recent events with their
redacted pictures, its configuration (the effective overlay, its layers, what the pole runs) and
the history of its overlays; for admins the forms that edit its overlay and revoke it."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from receiver.context import Context
from receiver.dashboard.fleet import fleet_row
from receiver.dashboard.formats import duration, pretty_json, size
from receiver.dashboard.render import Renderer
from receiver.documents import BadRequest, pole_id_of
from receiver.store.base import ConfigChange
from sync.overlays import effective_overlay, overlay_version

RECENT_EVENTS = 20
HISTORY = 20


def pictures(event: dict[str, Any]) -> list[dict[str, str]]:
    """The event's media as links: JPEGs are shown as thumbnails, a clip as a link."""
    kind = "clip" if event.get("type") == "clip" else "image"
    return [{"sha256": sha, "kind": kind} for sha in event.get("media") or []]


def status_rows(block: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The status block a pole sent, as (label, text) rows; what a pole left out (or sent in a shape
    this receiver does not know) is left out too, never an error."""

    def get(key: str) -> Any:
        return block.get(key)

    def number(key: str) -> float | None:
        value = get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def states(key: str) -> dict[str, Any]:
        value = get(key)
        return value if isinstance(value, dict) else {}

    backlog = states("backlog")
    clock = states("clock")
    rows = [
        ("software", str(get("software_version") or "-")),
        ("config file", str(get("config_file_version") or "-")),
        ("uptime", duration(number("uptime_s"))),
        ("backlog", ", ".join(f"{k} {v}" for k, v in backlog.items()) or "empty"),
        ("oldest", duration(number("oldest_age_s"))),
        ("outbox", size(number("outbox_bytes"))),
        ("disk free", size(number("disk_free_bytes"))),
        ("dead letters", "-" if number("dead_letters") is None else f"{number('dead_letters'):.0f}"),
    ]
    if clock:
        skew = clock.get("skew_s")
        rows.append(("clock skew", f"{skew:.1f} s" if isinstance(skew, (int, float)) else "unknown"))
    rows += [(f"camera {name}", str(state)) for name, state in states("cameras").items()]
    rows += [(f"sensor {name}", str(state)) for name, state in states("sensors").items()]
    return rows


class PolePage:
    def __init__(self, ctx: Context, render: Renderer) -> None:
        self.ctx = ctx
        self.render = render

    async def page(self, request: web.Request) -> web.Response:
        try:
            pole_id = pole_id_of(request)
        except BadRequest as exc:
            return self.render.error(request, exc.status, str(exc))
        return await self.show(request, pole_id)

    async def show(
        self,
        request: web.Request,
        pole_id: str,
        status: int = 200,
        config_text: str | None = None,
        problems: list[str] | None = None,
    ) -> web.Response:
        store = self.ctx.store
        pole = await store.get_pole(pole_id)
        if pole is None:
            return self.render.error(request, 404, f"No pole {pole_id!r}.")
        now = time.time()
        events = await store.recent_events(pole_id, RECENT_EVENTS)
        layers = await store.pole_overlays(pole_id)
        overlay = effective_overlay(layer.overlay for layer in layers)
        own = next((layer.overlay for layer in layers if layer.scope == "pole"), {})
        history: list[ConfigChange] = await store.config_history("pole", pole_id, HISTORY)
        for tag in pole.tags:
            history += await store.config_history("tag", tag, HISTORY)
        history.sort(key=lambda change: change.changed_at, reverse=True)
        return self.render.page(
            request,
            "pole.html",
            status,
            row=fleet_row(pole, now, self.ctx.config.online_window_s),
            pole=pole,
            status_block=pole.status or {},
            status_rows=status_rows(pole.status or {}),
            events=[{**e, "pictures": pictures(e)} for e in events],
            layers=layers,
            overlay=overlay,
            version=overlay_version(overlay),
            history=history[:HISTORY],
            config_text=config_text if config_text is not None else (pretty_json(own) if own else ""),
            problems=problems or [],
            saved=request.query.get("saved", ""),
            now=now,
        )
