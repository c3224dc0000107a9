"""``PUT/GET /v1/media/{sha256}``: redacted JPEGs and clips, content-addressed and idempotent.

A body must decode as what it says it is, a JPEG (:mod:`receiver.jpeg`) or an H.264 MP4 clip
(:mod:`receiver.mp4`), to be stored; it is kept as ``<sha256>.jpg`` or ``<sha256>.mp4`` and
served with that type and ``X-Content-Type-Options: nosniff``.
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
from receiver.auth import authenticate
from receiver.context import Context
from receiver.jpeg import jpeg_problem
from receiver.mp4 import mp4_problem
from sync.files import private_dir
from sync.protocol import is_sha256, media_type

SUFFIXES = {"image/jpeg": ".jpg", "video/mp4": ".mp4"}


class Media:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def path(self, sha: str, kind: str = "image/jpeg") -> Path:
        return self.ctx.media_dir / sha[:2] / f"{sha}{SUFFIXES[kind]}"

    def find(self, sha: str) -> tuple[Path, str] | None:
        """The stored file of a sha256 and its content type, if any."""
        for kind in SUFFIXES:
            path = self.path(sha, kind)
            if path.exists():
                return path, kind
        return None

    async def put(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        auth = await authenticate(request, ctx.store, "pole", use=ctx.token_use)
        if isinstance(auth, web.Response):
            return auth
        sha = request.match_info["sha256"]
        if not is_sha256(sha):
            return json_error(400, "media path must be a lowercase hex sha256")
        kind = request.content_type
        if kind not in SUFFIXES:
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
        Its type is what its first bytes say (the pole's ``media_type``): a clip or a JPEG."""
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
        path = self.path(sha, kind)
        if not path.exists():
            await asyncio.to_thread(_write_atomically, path, body)
        created = await ctx.store.add_media(sha, len(body), pole_id, time.time())
        ctx.metrics.media.labels("stored" if created else "duplicate").inc()
        return (201 if created else 200), {"sha256": sha, "stored": created}

    async def get(self, request: web.Request) -> web.StreamResponse:
        auth = await authenticate(request, self.ctx.store, "reader", use=self.ctx.token_use)
        if isinstance(auth, web.Response):
            return auth
        sha = request.match_info["sha256"]
        if not is_sha256(sha):
            return json_error(400, "media path must be a lowercase hex sha256")
        found = self.find(sha)
        if found is None:
            return json_error(404, "no such media")
        path, kind = found
        return web.FileResponse(path, headers={"Content-Type": kind, "X-Content-Type-Options": "nosniff"})


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
