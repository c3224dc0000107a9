"""``GET /media/{sha256}``: a redacted picture or clip for a logged-in user, from the media store.

Browsers cannot send the bearer token ``/v1/media`` asks for with an ``<img>``; this route is the
same file behind the session instead."""

from __future__ import annotations

from aiohttp import web

from receiver.context import Context
from receiver.dashboard.render import Renderer
from receiver.media import serve_media
from sync.protocol import is_sha256


class MediaProxy:
    def __init__(self, ctx: Context, render: Renderer) -> None:
        self.ctx = ctx
        self.render = render

    async def get(self, request: web.Request) -> web.StreamResponse:
        sha = request.match_info["sha256"]
        if not is_sha256(sha):
            return self.render.error(request, 400, "A media path is a lowercase hex sha256.")
        return await serve_media(request, self.ctx, sha)
