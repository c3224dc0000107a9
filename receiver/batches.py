"""``POST /v1/batches``: a pole's events over HTTP, stored effectively once."""

from __future__ import annotations

from aiohttp import web

from httpkit.body import BadEncoding, BodyTooLarge, read_json_body
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
        auth = await authenticate(request, ctx.store, "pole", use=ctx.token_use, cache=ctx.pole_tokens)
        if isinstance(auth, web.Response):
            ctx.metrics.batches.labels("unauthorized" if auth.status == 401 else "forbidden").inc()
            return auth
        assert auth.pole_id is not None, "pole tokens always name their pole"
        try:
            document = await self._read_document(request)
        except ProtocolError as exc:
            ctx.metrics.batches.labels("too_large" if exc.status == 413 else "invalid").inc()
            return answer(refused(exc.status, str(exc)))
        return answer(await ingest_batch(ctx, auth.pole_id, bytes(document)))

    async def _read_document(self, request: web.Request) -> bytearray:
        """The batch JSON: at most ``max_body_bytes`` on the wire, chunked or not, and at most
        ``max_decompressed_bytes`` once gunzipped (inflated step by step in a thread, a few
        batches at a time), so neither a long body nor a gzip bomb ends in memory."""
        config = self.ctx.config
        ctype = request.content_type
        if ctype != "application/json":
            raise ProtocolError(415, f"content type must be application/json, not {ctype!r}")
        try:
            return await read_json_body(request, config.max_body_bytes, config.max_decompressed_bytes, self.ctx.gunzip)
        except BodyTooLarge as exc:
            raise ProtocolError(413, f"batch {exc}") from None
        except BadEncoding as exc:
            encoding = request.headers.get("Content-Encoding", "identity")
            raise ProtocolError(exc.status, f"body cannot be decoded ({encoding}): {exc}") from None
