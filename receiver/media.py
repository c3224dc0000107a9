"""``PUT/GET /v1/media/{sha256}``: redacted JPEGs, content-addressed and idempotent.

A body must decode as a JPEG (:mod:`receiver.jpeg`) to be stored, and is served as
``image/jpeg`` with ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from httpkit.body import BadEncoding, BodyTooLarge, read_body, require_identity
from httpkit.errors import json_error, json_response
from receiver.auth import READERS, authenticate
from receiver.context import Context
from receiver.jpeg import jpeg_problem
from sync.files import private_dir
from sync.protocol import is_sha256


class Media:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def path(self, sha: str) -> Path:
        return self.ctx.media_dir / sha[:2] / f"{sha}.jpg"

    async def put(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        auth = await authenticate(request, ctx.store, "pole", use=ctx.token_use)
        if isinstance(auth, web.Response):
            return auth
        sha = request.match_info["sha256"]
        if not is_sha256(sha):
            return json_error(400, "media path must be a lowercase hex sha256")
        if request.content_type != "image/jpeg":
            return json_error(415, f"media must be image/jpeg, not {request.content_type!r}")
        try:
            require_identity(request)
            body = bytes(await read_body(request, ctx.config.max_media_bytes))
        except BadEncoding as exc:
            return json_error(exc.status, str(exc))
        except BodyTooLarge:
            return json_error(413, f"media larger than {ctx.config.max_media_bytes} bytes")
        status, answer = await self.accept(auth.pole_id or "", sha, body)
        return json_response(answer, status)

    async def accept(self, pole_id: str, sha: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Check and store a pole's media file, whichever transport brought it: (HTTP status, body)."""
        ctx = self.ctx
        if not body.startswith(b"\xff\xd8\xff"):
            return 415, {"error": "body is not a JPEG"}
        if hashlib.sha256(body).hexdigest() != sha:
            ctx.metrics.media.labels("hash_mismatch").inc()
            return 400, {"error": "body does not match its sha256"}
        problem = await asyncio.to_thread(jpeg_problem, body)
        if problem is not None:
            ctx.metrics.media.labels("not_jpeg").inc()
            return 415, {"error": f"body is not a JPEG: {problem}"}
        path = self.path(sha)
        if not path.exists():
            await asyncio.to_thread(_write_atomically, path, body)
        created = await ctx.store.add_media(sha, len(body), pole_id, time.time())
        ctx.metrics.media.labels("stored" if created else "duplicate").inc()
        return (201 if created else 200), {"sha256": sha, "stored": created}

    async def get(self, request: web.Request) -> web.StreamResponse:
        auth = await authenticate(request, self.ctx.store, *READERS, use=self.ctx.token_use)
        if isinstance(auth, web.Response):
            return auth
        sha = request.match_info["sha256"]
        if not is_sha256(sha):
            return json_error(400, "media path must be a lowercase hex sha256")
        path = self.path(sha)
        if not path.exists():
            return json_error(404, "no such media")
        return web.FileResponse(path, headers={"Content-Type": "image/jpeg", "X-Content-Type-Options": "nosniff"})


def _write_atomically(path: Path, data: bytes) -> None:
    """Write, fsync and rename, so a crash never leaves a partial JPEG under its hash.
    Directories are made 0700 and files 0600 (mkstemp's mode), whatever the umask."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
