"""Taking a pole's batch, once it is decoded: the one code path behind HTTP and MQTT.

The transport has already established who sent it (a pole token over HTTP, the
broker's authenticated topic over MQTT); from here on a batch is validated,
checked against the sender, filtered by the receiver's policy and stored
effectively once, and the answer is the same whichever way it came.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from receiver.context import Context
from sync.protocol import BatchReply, ErrorReply, ProtocolError, Rejection, parse_batch

log = structlog.get_logger("receiver")


@dataclass(frozen=True, slots=True)
class Outcome:
    """An answer to a pole: the HTTP status it stands for, and its body."""

    status: int
    body: BatchReply | ErrorReply


def refused(status: int, message: str, rejected: list[Rejection] | None = None) -> Outcome:
    return Outcome(status, ErrorReply(error=message, rejected=rejected or []))


async def ingest_batch(ctx: Context, pole_id: str, document: bytes, credential: str = "token") -> Outcome:
    """Validate and store the batch ``document`` sent by ``pole_id``, as its ``credential`` (the
    bearer token, the MQTT topic) says."""
    started = time.perf_counter()
    try:
        return await _ingest(ctx, pole_id, document, credential)
    finally:
        transport = "mqtt" if credential == "topic" else "http"
        ctx.metrics.ingest_latency.labels(transport).observe(time.perf_counter() - started)


async def _ingest(ctx: Context, pole_id: str, document: bytes, credential: str) -> Outcome:
    metrics = ctx.metrics
    try:
        envelope, events, invalid, dropped_status = parse_batch(document)
    except ProtocolError as exc:
        metrics.batches.labels("too_large" if exc.status == 413 else "invalid").inc()
        return refused(exc.status, str(exc))
    if envelope.pole_id != pole_id:
        metrics.batches.labels("forbidden").inc()
        return refused(403, f"{credential} belongs to pole {pole_id!r}, not {envelope.pole_id!r}")
    if invalid:
        metrics.batches.labels("invalid").inc()
        metrics.rejected.labels("invalid").inc(len(invalid))
        return refused(400, f"{len(invalid)} invalid event(s); nothing stored", invalid)

    if dropped_status is not None:
        log.warning("status_block_dropped", pole_id=envelope.pole_id, reason=dropped_status)
    now = time.time()
    rejected: list[Rejection] = []
    storable = []
    redacted = 0
    for event in events:
        verdict = ctx.rules.apply(event, now)
        if verdict.refusal is None:
            storable.append(verdict.event)
            redacted += verdict.redacted
        else:
            rejected.append(Rejection(id=event.id, reason=verdict.refusal))
            metrics.rejected.labels(verdict.kind or "policy").inc()
    if redacted:
        metrics.redacted.inc(redacted)
    status = envelope.status.model_dump(exclude_none=True) if envelope.status else None
    result = await ctx.store.insert_batch(envelope.pole_id, envelope.batch_id, storable, status, now)
    metrics.batches.labels("stored").inc()
    metrics.events.labels("accepted").inc(len(result.accepted))
    metrics.events.labels("duplicate").inc(len(result.duplicates))
    metrics.events.labels("rejected").inc(len(rejected) + len(result.rejected))
    if result.rejected:
        metrics.rejected.labels("database").inc(len(result.rejected))
    if rejected:
        first = rejected[0].reason
        log.warning("events_refused_by_policy", pole_id=envelope.pole_id, events=len(rejected), first=first)
    if result.rejected:
        first = result.rejected[0].reason
        log.warning("events_refused_by_database", pole_id=envelope.pole_id, events=len(result.rejected), first=first)
    return Outcome(
        200,
        BatchReply(
            accepted=result.accepted,
            duplicates=result.duplicates,
            rejected=rejected + result.rejected,
            missing_media=result.missing_media,
            config_version=result.config_target,
        ),
    )
