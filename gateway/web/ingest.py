"""``POST /v1/events``: other programs on the pole submit events to the outbox.

The answer comes only after the events are committed. Images are not accepted
here: every pixel that leaves the pole must have gone through redaction, and
this door would bypass it. Nothing the receiver could not store gets in either
(:mod:`sync.limits`: no NUL, 64-bit integers, bounded nesting and size), nor a
``ts`` outside the window around now that ``http.max_future_s`` and
``http.max_past_s`` allow: each is a 400 naming the field.

The pole's event policy applies here as to every producer (the sink is the daemon's
``RecordingSink``): an event of a type it withholds is not committed, and the 201 lists it
under ``withheld`` (its id and seq are null) with the reason; dropped or hashed fields are
committed without their plain value.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError, field_validator

from httpkit.body import BadEncoding, BodyTooLarge, read_body, require_identity
from httpkit.errors import json_error, json_response
from sync import limits
from sync.events import EventSink, Location, NewEvent, Priority
from sync.outbox import EventTooLarge, OutboxDiskFull, OutboxFull
from sync.protocol import EVENT_TYPE_PATTERN, PriorityName

LocationSource = Callable[[], Location | None]


class IngestEvent(BaseModel):
    """One submitted event."""

    model_config = ConfigDict(extra="forbid")

    type: Annotated[str, StringConstraints(pattern=EVENT_TYPE_PATTERN)]
    data: dict[str, Any] = Field(default_factory=dict)
    priority: PriorityName = "event"
    ts: float | None = None

    @field_validator("ts")
    @classmethod
    def _sane_time(cls, value: float | None) -> float | None:
        if value is not None:
            try:
                limits.check_ts(value)
            except limits.Unstorable as exc:
                raise ValueError(exc.why) from None
        return value


_ONE = TypeAdapter(IngestEvent)
_MANY = TypeAdapter(list[IngestEvent])


def _field_errors(exc: ValidationError, listed: bool) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = list(err["loc"])
        if listed and loc and isinstance(loc[0], int):
            where = f"events[{loc[0]}]" + "".join(f".{p}" for p in loc[1:])
        else:
            where = ".".join(str(p) for p in loc)
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _storable_errors(items: list[IngestEvent], listed: bool, now: float, max_future_s: float, max_past_s: float) -> str:
    """What of the validated events the receiver could not store, or a timestamp outside the window."""
    parts = []
    for n, item in enumerate(items):
        prefix = f"events[{n}]." if listed else ""
        if item.ts is not None and item.ts > now + max_future_s:
            parts.append(f"{prefix}ts: more than {max_future_s:.0f} s in the future (http.max_future_s)")
        elif item.ts is not None and item.ts < now - max_past_s:
            parts.append(f"{prefix}ts: more than {max_past_s:.0f} s in the past (http.max_past_s)")
        try:
            limits.check_data(item.data)
        except limits.Unstorable as exc:
            parts.append(prefix + str(exc))
        if len(parts) >= 5:
            break
    return "; ".join(parts)


def make_ingest_handler(
    sink: EventSink,
    location: LocationSource,
    max_events: int,
    max_future_s: float = 86_400.0,
    max_past_s: float = 30 * 86_400.0,
    max_body_bytes: int = 1_000_000,
) -> Callable[[web.Request], Any]:
    async def post_events(request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return json_error(415, f"content type must be application/json, not {request.content_type!r}")
        try:
            require_identity(request)
            raw = await read_body(request, max_body_bytes)
        except BadEncoding as exc:
            return json_error(exc.status, str(exc))
        except BodyTooLarge as exc:
            return json_error(413, str(exc))
        try:
            doc = limits.loads(raw)
        except orjson.JSONDecodeError as exc:
            return json_error(400, f"body is not valid JSON: {exc}")
        listed = isinstance(doc, list)
        if listed and len(doc) > max_events:
            return json_error(413, f"{len(doc)} events in one request; at most {max_events}")
        if listed and not doc:
            return json_error(400, "empty list: nothing to store")
        try:
            items = _MANY.validate_python(doc) if listed else [_ONE.validate_python(doc)]
        except ValidationError as exc:
            return json_error(400, _field_errors(exc, listed))
        now = time.time()
        problems = _storable_errors(items, listed, now, max_future_s, max_past_s)
        if problems:
            return json_error(400, problems)
        here = location()
        events = [
            NewEvent(
                type=i.type,
                data=i.data,
                priority=Priority.parse(i.priority),
                ts=i.ts if i.ts is not None else now,
                location=here,
            )
            for i in items
        ]
        results = await asyncio.gather(*(sink.put(e) for e in events), return_exceptions=True)
        failed = [(n, r) for n, r in enumerate(results) if isinstance(r, BaseException)]
        receipts = [r for r in results if not isinstance(r, BaseException)]
        withheld = [
            {"index": n, "reason": r.withheld}
            for n, r in enumerate(results)
            if not isinstance(r, BaseException) and r.withheld is not None
        ]
        if not failed:
            body: dict[str, Any] = {
                "ids": [r.id or None for r in receipts],
                "seqs": [r.seq or None for r in receipts],
            }
            if withheld:
                body["withheld"] = withheld
            return json_response(body, 201)
        committed = [r.id for r in receipts if r.withheld is None]
        errors = [{"index": n, "error": str(r)} for n, r in failed]
        first = failed[0][1]
        if isinstance(first, EventTooLarge):
            return json_error(413, str(first), ids=committed, failed=errors)
        if isinstance(first, (OutboxFull, OutboxDiskFull)):
            return json_error(507, str(first), ids=committed, failed=errors)
        if isinstance(first, ValueError):
            return json_error(400, str(first), ids=committed, failed=errors)
        return json_error(503, f"outbox unavailable: {first}", ids=committed, failed=errors)

    return post_events
