"""``POST /v1/batches``: a pole's events, stored effectively once."""

from __future__ import annotations

import time

import structlog
from aiohttp import web

from httpkit.body import BadEncoding, BodyTooLarge, read_json_body
from httpkit.errors import json_response
from receiver.auth import authenticate
from receiver.context import Context
from receiver.policy import refusal
from sync.protocol import BatchReply, ErrorReply, ProtocolError, Rejection, parse_batch

log = structlog.get_logger("receiver")


def batch_error(status: int, message: str, rejected: list[Rejection] | None = None) -> web.Response:
    return json_response(ErrorReply(error=message, rejected=rejected or []), status)


class Batches:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def post(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        auth = await authenticate(request, ctx.store, "pole", use=ctx.token_use)
        if isinstance(auth, web.Response):
            ctx.metrics.batches.labels("unauthorized" if auth.status == 401 else "forbidden").inc()
            return auth
        try:
            document = await self._read_document(request)
            envelope, events, invalid, dropped_status = parse_batch(document)
        except ProtocolError as exc:
            ctx.metrics.batches.labels("too_large" if exc.status == 413 else "invalid").inc()
            return batch_error(exc.status, str(exc))
        if envelope.pole_id != auth.pole_id:
            ctx.metrics.batches.labels("forbidden").inc()
            return batch_error(403, f"token belongs to pole {auth.pole_id!r}, not {envelope.pole_id!r}")
        if invalid:
            ctx.metrics.batches.labels("invalid").inc()
            return batch_error(400, f"{len(invalid)} invalid event(s); nothing stored", invalid)

        if dropped_status is not None:
            log.warning("status_block_dropped", pole_id=envelope.pole_id, reason=dropped_status)
        now = time.time()
        refused: list[Rejection] = []
        storable = []
        for event in events:
            reason = refusal(event, ctx.policy, now)
            if reason is None:
                storable.append(event)
            else:
                refused.append(Rejection(id=event.id, reason=reason))
        status = envelope.status.model_dump(exclude_none=True) if envelope.status else None
        result = await ctx.store.insert_batch(envelope.pole_id, envelope.batch_id, storable, status, now)
        ctx.metrics.batches.labels("stored").inc()
        ctx.metrics.events.labels("accepted").inc(len(result.accepted))
        ctx.metrics.events.labels("duplicate").inc(len(result.duplicates))
        ctx.metrics.events.labels("rejected").inc(len(refused) + len(result.rejected))
        if refused:
            log.warning(
                "events_refused_by_policy", pole_id=envelope.pole_id, events=len(refused), first=refused[0].reason
            )
        if result.rejected:
            log.warning(
                "events_refused_by_database",
                pole_id=envelope.pole_id,
                events=len(result.rejected),
                first=result.rejected[0].reason,
            )
        return json_response(
            BatchReply(
                accepted=result.accepted,
                duplicates=result.duplicates,
                rejected=refused + result.rejected,
                missing_media=result.missing_media,
                config_version=ctx.config.config_version,
            )
        )

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
