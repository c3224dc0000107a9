"""``POST /v1/batches``: a pole's events over HTTP, stored effectively once."""

from __future__ import annotations

import zlib

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestPayloadError

from httpkit.errors import json_response
from receiver.auth import authenticate
from receiver.context import Context
from receiver.ingest import Outcome, ingest_batch, refused
from sync.protocol import ProtocolError


def answer(outcome: Outcome) -> web.Response:
    return json_response(outcome.body, outcome.status)


class Batches:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def post(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        auth = await authenticate(request, ctx.store, "pole")
        if isinstance(auth, web.Response):
            ctx.metrics.batches.labels("unauthorized" if auth.status == 401 else "forbidden").inc()
            return auth
        assert auth.pole_id is not None, "pole tokens always name their pole"
        try:
            document = await self._read_document(request)
        except ProtocolError as exc:
            ctx.metrics.batches.labels("too_large" if exc.status == 413 else "invalid").inc()
            return answer(refused(exc.status, str(exc)))
        return answer(await ingest_batch(ctx, auth.pole_id, document))

    async def _read_document(self, request: web.Request) -> bytes:
        """The batch JSON. aiohttp gunzips as it reads and stops at ``client_max_size``
        decompressed bytes, so a gzip bomb ends in a 413 rather than in memory."""
        config = self.ctx.config
        ctype = request.content_type
        if ctype != "application/json":
            raise ProtocolError(415, f"content type must be application/json, not {ctype!r}")
        if request.content_length is not None and request.content_length > config.max_body_bytes:
            raise ProtocolError(413, f"body of {request.content_length} bytes; at most {config.max_body_bytes}")
        try:
            return await request.clone(client_max_size=config.max_decompressed_bytes).read()
        except web.HTTPRequestEntityTooLarge:
            limit = config.max_decompressed_bytes
            raise ProtocolError(413, f"batch larger than {limit} bytes once decompressed") from None
        except (ContentEncodingError, RequestPayloadError, zlib.error) as exc:
            encoding = request.headers.get("Content-Encoding", "identity")
            raise ProtocolError(400, f"body cannot be decoded ({encoding}): {exc}") from None
