"""``PUT/GET /v1/media/{sha256}``: redacted JPEGs and clips, content-addressed and idempotent.

A body must decode as what it says it is, a JPEG (:mod:`receiver.jpeg`) or an H.264 MP4 clip
(:mod:`receiver.mp4`), to be stored; it is kept as ``<sha256>.jpg`` or ``<sha256>.mp4`` and
served with that type and ``X-Content-Type-Options: nosniff``. The bytes live in a media store
(:mod:`receiver.mediastore`: a directory or S3); the database indexes them.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import structlog
from aiohttp import web

from httpkit.body import BadEncoding, BodyTooLarge, read_body, require_identity
from httpkit.errors import json_error, json_response
from receiver.auth import READERS, authenticate
from receiver.context import Context
from receiver.jpeg import jpeg_problem
from receiver.mediastore.base import KINDS, MediaUnavailable
from receiver.mp4 import mp4_problem
from sync.protocol import is_sha256, media_type

log = structlog.get_logger("receiver")


class Media:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def put(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        auth = await authenticate(request, ctx.store, "pole", use=ctx.token_use, cache=ctx.pole_tokens)
        if isinstance(auth, web.Response):
            return auth
        sha = request.match_info["sha256"]
        if not is_sha256(sha):
            return json_error(400, "media path must be a lowercase hex sha256")
        kind = request.content_type
        if kind not in KINDS:
            return json_error(415, f"media must be image/jpeg or video/mp4, not {kind!r}")
        limit = ctx.config.max_clip_bytes if kind == "video/mp4" else ctx.config.max_media_bytes
        try:
            require_identity(request)
            body = bytes(await read_body(request, limit))
        except BadEncoding as exc:
            return json_error(exc.status, str(exc))
        except BodyTooLarge:
            return json_error(413, f"{kind} larger than {limit} bytes")
        if media_type(body) != kind:
            return json_error(415, f"declared {kind} but the body is {media_type(body)}")
        status, answer = await self.accept(auth.pole_id or "", sha, body)
        return json_response(answer, status)

    async def accept(self, pole_id: str, sha: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Check and store a pole's media file, whichever transport brought it: (HTTP status, body).
        Its type is what its first bytes say (the pole's ``media_type``): a clip or a JPEG. The
        file is in the media store before the database lists it, so a listed file always exists, and
        is looked for again once listed: retention may have deleted it in between (listing it waited
        for retention to finish forgetting it), or a failed try may have left it listed and missing."""
        ctx = self.ctx
        kind = media_type(body)
        if kind == "image/jpeg" and not body.startswith(b"\xff\xd8\xff"):
            return 415, {"error": "body is not a JPEG or an MP4 clip"}
        if hashlib.sha256(body).hexdigest() != sha:
            ctx.metrics.media.labels("hash_mismatch").inc()
            return 400, {"error": "body does not match its sha256"}
        check, name = (mp4_problem, "an MP4 clip") if kind == "video/mp4" else (jpeg_problem, "a JPEG")
        problem = await asyncio.to_thread(check, body)
        if problem is not None:
            ctx.metrics.media.labels("not_jpeg" if kind == "image/jpeg" else "not_mp4").inc()
            return 415, {"error": f"body is not {name}: {problem}"}
        try:
            await self._keep(sha, kind, body)
            created = await ctx.store.add_media(sha, len(body), pole_id, time.time())
            await self._keep(sha, kind, body)
        except MediaUnavailable as exc:
            ctx.metrics.media.labels("unavailable").inc()
            log.error("media_store_unavailable", store=ctx.media.name, error=str(exc))
            return 503, {"error": "media store unavailable, retry later"}
        ctx.metrics.media.labels("stored" if created else "duplicate").inc()
        return (201 if created else 200), {"sha256": sha, "stored": created}

    async def _keep(self, sha: str, kind: str, body: bytes) -> None:
        if not await self.ctx.media.exists(sha, kind):
            await self.ctx.media.put(sha, kind, body)

    async def get(self, request: web.Request) -> web.StreamResponse:
        auth = await authenticate(request, self.ctx.store, *READERS, use=self.ctx.token_use)
        if isinstance(auth, web.Response):
            return auth
        sha = request.match_info["sha256"]
        if not is_sha256(sha):
            return json_error(400, "media path must be a lowercase hex sha256")
        return await serve_media(request, self.ctx, sha)


async def serve_media(request: web.Request, ctx: Context, sha: str) -> web.StreamResponse:
    """The stored file of ``sha`` to an authorised reader: streamed, or a redirect to a presigned URL."""
    try:
        found = await ctx.media.get(sha)
    except MediaUnavailable as exc:
        log.error("media_store_unavailable", store=ctx.media.name, error=str(exc))
        return json_error(503, "media store unavailable, retry later")
    if found is None:
        return json_error(404, "no such media")
    headers = {
        "Content-Type": found.kind,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, max-age=3600",
    }
    if found.url is not None:
        raise web.HTTPFound(found.url, headers={"Cache-Control": "no-store"})
    assert found.chunks is not None
    response = web.StreamResponse(headers={**headers, "Content-Length": str(found.size)})
    await response.prepare(request)
    async for chunk in found.chunks:
        await response.write(chunk)
    await response.write_eof()
    return response
