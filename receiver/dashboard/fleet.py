"""``GET /``: the fleet. A table of the poles (online or not, last contact, backlog, versions,
configuration state), filtered by tag and online state, a page at a time; the positions of all
the poles the filters leave on a map; and for admins the form that registers a pole."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from aiohttp import web

from receiver.context import Context
from receiver.dashboard.mapview import MAX_POLES, pole_state_name, project
from receiver.dashboard.render import Renderer
from receiver.documents import BadRequest
from receiver.poles import parse_pole_query
from receiver.store.base import PoleState


def config_state(pole: PoleState) -> str:
    """ "in sync", "pending" (the pole runs another version than its target), "error" (it said why it
    cannot apply it) or "not reported" (no status block yet)."""
    if pole.config_error:
        return "error"
    if pole.config_applied is None:
        return "not reported"
    return "in sync" if pole.config_applied == pole.config_target else "pending"


def fleet_row(pole: PoleState, now: float, window_s: float) -> dict[str, Any]:
    status = pole.status or {}
    return {
        "pole": pole,
        "state": pole_state_name(pole, now, window_s),
        "software": status.get("software_version"),
        "config_file": status.get("config_file_version"),
        "config": config_state(pole),
    }


class FleetPage:
    def __init__(self, ctx: Context, render: Renderer) -> None:
        self.ctx = ctx
        self.render = render

    async def page(self, request: web.Request) -> web.Response:
        return await self.show(request)

    async def show(
        self, request: web.Request, status: int = 200, register_error: str = "", form: dict[str, str] | None = None
    ) -> web.Response:
        now = time.time()
        window = self.ctx.config.online_window_s
        given = {k: v for k, v in request.query.items() if v != ""}
        try:
            query = parse_pole_query(given, now - window)
        except BadRequest as exc:
            return self.render.error(request, exc.status, str(exc))
        found = await self.ctx.store.list_poles(query)
        rows = [fleet_row(p, now, window) for p in found.poles]
        summary = await self.ctx.store.fleet_summary(now - window)
        positions = await self.ctx.store.pole_positions(replace(query, after=None, limit=MAX_POLES + 1))
        return self.render.page(
            request,
            "fleet.html",
            status,
            rows=rows,
            summary=summary,
            map=project(positions, now, window),
            tag=given.get("tag", ""),
            online=given.get("online", ""),
            next_cursor=found.next_cursor,
            register_error=register_error,
            form=form or {},
            now=now,
        )
