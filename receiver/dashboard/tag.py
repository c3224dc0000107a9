"""``GET /tags/{tag}``: a tag's configuration overlay, the poles it reaches and its history; for
admins the form that edits it (it reaches every pole carrying the tag, below the pole's own)."""

from __future__ import annotations

import time

from aiohttp import web

from receiver.context import Context
from receiver.dashboard.fleet import fleet_row
from receiver.dashboard.formats import pretty_json
from receiver.dashboard.pole import HISTORY
from receiver.dashboard.render import Renderer
from receiver.documents import BadRequest, tag_of
from receiver.poles import PAGE_MAX
from receiver.store.base import PoleQuery


class TagPage:
    def __init__(self, ctx: Context, render: Renderer) -> None:
        self.ctx = ctx
        self.render = render

    async def page(self, request: web.Request) -> web.Response:
        try:
            tag = tag_of(request)
        except BadRequest as exc:
            return self.render.error(request, exc.status, str(exc))
        return await self.show(request, tag)

    async def show(
        self,
        request: web.Request,
        tag: str,
        status: int = 200,
        config_text: str | None = None,
        problems: list[str] | None = None,
    ) -> web.Response:
        store = self.ctx.store
        now = time.time()
        layer = await store.get_overlay("tag", tag)
        poles = await store.list_poles(PoleQuery(tag=tag, limit=PAGE_MAX))
        own = layer.overlay if layer is not None else {}
        return self.render.page(
            request,
            "tag.html",
            status,
            tag=tag,
            layer=layer,
            rows=[fleet_row(p, now, self.ctx.config.online_window_s) for p in poles.poles],
            more=poles.next_cursor is not None,
            history=await store.config_history("tag", tag, HISTORY),
            config_text=config_text if config_text is not None else (pretty_json(own) if own else ""),
            problems=problems or [],
            saved=request.query.get("saved", ""),
            now=now,
        )
