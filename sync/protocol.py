"""Wire protocol v1 between a pole and the receiver, shared by both sides.

A batch is one JSON document, gzip-compressed on the wire:

    {"schema_version": 1, "pole_id": "...", "batch_id": "<uuid>", "sent_at": <epoch s>,
     "events": [<event>, ...], "status": {<status block>}}

Each event is exactly the body the pole's outbox committed:

    {"id": "<uuidv7>", "seq": <int>, "ts": <epoch s>, "type": "presence",
     "priority": "alert|event|telemetry|media", "location": {"lat", "lon", "source"} | null,
     "data": {...}, "media": ["<sha256>", ...]}

The pole builds the document by joining the stored event bodies, never
re-encoding them (see :func:`encode_batch`); the receiver validates each event
on its own so one bad event is named by id with its reason. What an event may
hold (no NUL, 64-bit integers, nesting, the ``ts`` range) is defined once, in
:mod:`sync.limits`, for the pole's ingest, its outbox and this parser alike.

Replies to ``POST /v1/batches``:

- 200 ``{"accepted": [id], "duplicates": [id], "rejected": [{"id", "reason"}],
  "missing_media": [sha256], "config_version": "..."}``: stored; ``rejected`` are
  events the receiver's policy or its database refuses (they will never be
  accepted: dead-letter them);
  ``missing_media`` are referenced JPEGs it does not have yet (``PUT /v1/media/{sha256}``).
- 400 ``{"error": "...", "rejected": [{"id", "reason"}]}``: nothing stored; when
  ``rejected`` names events, only those are invalid and the rest may be sent again.
- 401 unknown or revoked token, 403 token of another pole, 413 too large,
  415 not JSON or not gzip: nothing stored.
"""

from __future__ import annotations

import gzip
import re
from typing import Annotated, Any, Literal, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from sync import limits

SCHEMA_VERSION = 1
BATCHES_PATH = "/v1/batches"
MEDIA_PATH = "/v1/media/{sha256}"

MAX_EVENTS_PER_BATCH = 10_000
MAX_MEDIA_REFS = 8
MAX_EVENT_BYTES = limits.MAX_DATA_BYTES  # one event's data as JSON

EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
POLE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_SHA256 = re.compile(SHA256_PATTERN)

Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]
PriorityName = Literal["alert", "event", "telemetry", "media"]


def is_sha256(value: str) -> bool:
    return bool(_SHA256.match(value))


class WireLocation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lat: float = Field(..., ge=-90, le=90)
    lon: float = Field(..., ge=-180, le=180)
    source: str | None = Field(None, max_length=16)

    @field_validator("source")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("contains a NUL character (U+0000), which cannot be stored")
        return value


class WireEvent(BaseModel):
    """One event as it travels; the receiver validates each one separately."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: Annotated[str, StringConstraints(pattern=UUID_PATTERN)]
    seq: int = Field(..., ge=1, le=limits.INT64_MAX)
    ts: float
    type: Annotated[str, StringConstraints(pattern=EVENT_TYPE_PATTERN)]
    priority: PriorityName
    location: WireLocation | None = None
    data: dict[str, Any]
    media: list[Sha256] = Field(default_factory=list, max_length=MAX_MEDIA_REFS)

    @field_validator("ts", mode="before")
    @classmethod
    def _finite_number(cls, value: Any) -> Any:
        # strict mode refuses ints for floats; an integral timestamp is still a timestamp.
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, float):
            try:
                limits.check_ts(value)
            except limits.Unstorable as exc:
                raise ValueError(exc.why) from None
        return value


class StatusBlock(BaseModel):
    """What the pole says about itself in every batch. Unknown keys are kept: newer poles may say more."""

    model_config = ConfigDict(extra="allow")

    backlog: dict[str, int] = Field(default_factory=dict)
    oldest_age_s: float | None = None
    outbox_bytes: int | None = None
    disk_free_bytes: int | None = None
    dead_letters: int | None = None
    software_version: str | None = None
    config_version: str | None = None
    uptime_s: float | None = None


class BatchEnvelope(BaseModel):
    """Everything of a batch but its events, which are validated one by one."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1]
    pole_id: Annotated[str, StringConstraints(pattern=POLE_ID_PATTERN)]
    batch_id: Annotated[str, StringConstraints(pattern=UUID_PATTERN)]
    sent_at: float
    events: list[Any] = Field(..., max_length=MAX_EVENTS_PER_BATCH)
    status: StatusBlock | None = None


class Rejection(BaseModel):
    id: str
    reason: str


class BatchReply(BaseModel):
    accepted: list[str] = Field(default_factory=list)
    duplicates: list[str] = Field(default_factory=list)
    rejected: list[Rejection] = Field(default_factory=list)
    missing_media: list[str] = Field(default_factory=list)
    config_version: str | None = None


class ErrorReply(BaseModel):
    error: str
    rejected: list[Rejection] = Field(default_factory=list)


class ProtocolError(ValueError):
    """A request body that cannot be read as a batch; ``status`` is the HTTP code to answer."""

    def __init__(self, status: int, message: str, rejected: list[Rejection] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.rejected = rejected or []


def encode_batch(
    pole_id: str, batch_id: str, sent_at: float, bodies: list[str], status: dict[str, Any] | None
) -> bytes:
    """The batch JSON, built around the stored event bodies without parsing them."""
    head = orjson.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "pole_id": pole_id,
            "batch_id": batch_id,
            "sent_at": sent_at,
            "status": status,
        }
    )
    return head[:-1] + b',"events":[' + ",".join(bodies).encode() + b"]}"


def compress(document: bytes, level: int = 5) -> bytes:
    return gzip.compress(document, compresslevel=level, mtime=0)


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(event)"


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        parts.append(f"{_where(err['loc'])}: {err['msg']}")
    return "; ".join(parts)


class ParsedBatch(NamedTuple):
    envelope: BatchEnvelope
    events: list[WireEvent]
    rejected: list[Rejection]
    dropped_status: str | None  # why the status block was left out (it breaks sync.limits), if it was


def parse_batch(document: bytes | bytearray) -> ParsedBatch:
    """Parse and validate a batch; invalid events come back as rejections, not exceptions.

    A status block the database could not store is dropped (and said so), never a reason to
    refuse the events: every batch of that pole would carry it.
    """
    try:
        raw = limits.loads(document)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ProtocolError(400, "batch must be a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ProtocolError(400, f"unsupported schema_version {version!r}; this receiver speaks {SCHEMA_VERSION}")
    try:
        envelope = BatchEnvelope.model_validate(raw)
    except ValidationError as exc:
        raise ProtocolError(400, f"invalid batch: {describe_validation(exc)}") from None
    dropped_status = None
    if envelope.status is not None:
        try:
            limits.check_value(envelope.status.model_dump(), "status")
        except limits.Unstorable as exc:
            dropped_status = str(exc)
            envelope.status = None
    events: list[WireEvent] = []
    rejected: list[Rejection] = []
    seen: dict[str, Any] = {}
    for i, item in enumerate(envelope.events):
        ident = item.get("id") if isinstance(item, dict) else None
        label = ident if isinstance(ident, str) else f"events[{i}]"
        try:
            event = WireEvent.model_validate(item)
            limits.check_data(event.data)
        except ValidationError as exc:
            rejected.append(Rejection(id=label, reason=describe_validation(exc)))
            continue
        except limits.Unstorable as exc:
            rejected.append(Rejection(id=label, reason=str(exc)))
            continue
        if event.id in seen:
            if seen[event.id] != item:
                rejected.append(Rejection(id=event.id, reason="id: repeated in this batch with a different body"))
            continue  # a repeat with the same body is the same event: store it once
        seen[event.id] = item
        events.append(event)
    if rejected:
        refused = {r.id for r in rejected}
        events = [e for e in events if e.id not in refused]
    return ParsedBatch(envelope, events, rejected, dropped_status)
