"""``GET /v1/events``: stored events for readers, filtered, in pages with a cursor."""

from __future__ import annotations

from aiohttp import web

from httpkit.errors import json_error, json_response
from receiver.auth import authenticate
from receiver.context import Context
from receiver.store.base import EventQuery


class Events:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def list(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        auth = await authenticate(request, ctx.store, "reader")
        if isinstance(auth, web.Response):
            return auth
        q = request.query
        try:
            limit = int(q.get("limit", "100"))
            after = int(q.get("cursor", "0"))
            since = float(q["since"]) if "since" in q else None
            until = float(q["until"]) if "until" in q else None
        except ValueError as exc:
            return json_error(400, f"bad query parameter: {exc}")
        if not 1 <= limit <= ctx.config.events_page_max:
            return json_error(400, f"limit must be between 1 and {ctx.config.events_page_max}")
        page = await ctx.store.query_events(
            EventQuery(pole_id=q.get("pole"), type=q.get("type"), since=since, until=until, after=after, limit=limit)
        )
        return json_response({"events": page.events, "next_cursor": page.next_cursor})
