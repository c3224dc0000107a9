"""``GET /v1/poles``: the poles the receiver knows, with their last status."""

from __future__ import annotations

import time

from aiohttp import web

from httpkit.errors import json_response
from receiver.auth import authenticate
from receiver.context import Context


class Poles:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def list(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        auth = await authenticate(request, ctx.store, "reader", use=ctx.token_use)
        if isinstance(auth, web.Response):
            return auth
        now = time.time()
        window = ctx.config.online_window_s
        return json_response(
            {
                "poles": [
                    {
                        "pole_id": p.pole_id,
                        "last_seen": p.last_seen,
                        "online": p.last_seen is not None and now - p.last_seen <= window,
                        "max_seq": p.max_seq,
                        "events_total": p.events_total,
                        "status": p.status,
                    }
                    for p in await ctx.store.poles()
                ]
            }
        )
