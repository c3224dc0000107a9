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

The same over MQTT v5 (QoS 1, a persistent session on both ends):

- the pole publishes the gzip batch to ``smartpole/v1/{pole_id}/batches`` with the
  batch id as correlation data and ``smartpole/v1/{pole_id}/replies`` as response topic;
  a JPEG or clip the receiver lacks goes to ``smartpole/v1/{pole_id}/media/{sha256}``
  with correlation data ``media:{sha256}``;
- the receiver answers on the response topic with the body it would answer over HTTP
  plus ``"status"``, the HTTP status it stands for, and the same correlation data.
  The pole settles a batch only on that reply, never on the broker's PUBACK;
- both directions carry a user property ``smartpole-mac``: HMAC-SHA256 of the
  correlation data and the payload, keyed by the sha256 of the pole's token (what the
  receiver stores). The broker's ACL keeps poles apart; the MAC still does when the ACL
  is wrong, and a revoked token stops a pole's messages without touching the broker.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from sync import limits

SCHEMA_VERSION = 1
BATCHES_PATH = "/v1/batches"
MEDIA_PATH = "/v1/media/{sha256}"
MQTT_ROOT = "smartpole/v1"

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


def media_type(data: bytes) -> str:
    """The content type of a media file from its first bytes: an MP4 clip (ISO BMFF ``ftyp`` box) or a JPEG."""
    return "video/mp4" if data[4:8] == b"ftyp" else "image/jpeg"


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
    config_version: str | None = None  # the remote configuration version the pole runs ("0": none)
    config_error: str | None = None  # why it does not run its target version, if it does not
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


def broker_address(url: str) -> tuple[str, int, bool]:
    """Host, port and TLS of ``mqtts://host:port`` or ``mqtt://host:port``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"broker URL must be mqtts://HOST[:PORT] or mqtt://HOST[:PORT], not {url!r}")
    tls = parts.scheme == "mqtts"
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


def batches_topic(pole_id: str) -> str:
    return f"{MQTT_ROOT}/{pole_id}/batches"


def media_topic(pole_id: str, sha256: str) -> str:
    return f"{MQTT_ROOT}/{pole_id}/media/{sha256}"


def replies_topic(pole_id: str) -> str:
    return f"{MQTT_ROOT}/{pole_id}/replies"


def media_correlation(sha256: str) -> bytes:
    return f"media:{sha256}".encode()


@dataclass(frozen=True, slots=True)
class PoleTopic:
    """Where a pole published: its id, ``batches`` or ``media``, and the media's sha256."""

    pole_id: str
    kind: Literal["batches", "media"]
    sha256: str | None = None


_POLE_ID = re.compile(POLE_ID_PATTERN)


def parse_pole_topic(topic: str) -> PoleTopic:
    """Read a topic a pole publishes to; raise :class:`ProtocolError` (400) for anything else."""
    parts = topic.split("/")
    if len(parts) < 4 or "/".join(parts[:2]) != MQTT_ROOT or not _POLE_ID.match(parts[2]):
        raise ProtocolError(400, f"not a pole topic: {topic[:200]!r}")
    if len(parts) == 4 and parts[3] == "batches":
        return PoleTopic(parts[2], "batches")
    if len(parts) == 5 and parts[3] == "media" and is_sha256(parts[4]):
        return PoleTopic(parts[2], "media", parts[4])
    raise ProtocolError(400, f"not a pole topic: {topic[:200]!r}")


def mqtt_reply(status: int, body: dict[str, Any]) -> bytes:
    """The receiver's MQTT reply: the HTTP answer's body with the status it stands for."""
    return orjson.dumps({**body, "status": status})


def read_mqtt_reply(payload: bytes) -> tuple[int, bytes]:
    """The status and body of a receiver's MQTT reply; a reply without a status counts as a 502."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return 502, payload
    status = doc.get("status") if isinstance(doc, dict) else None
    if not isinstance(status, int) or isinstance(status, bool):
        return 502, payload
    return status, payload


MAC_PROPERTY = "smartpole-mac"


def token_hash(token: str) -> str:
    """What the receiver stores of a bearer token, and the key of a pole's MQTT messages."""
    return hashlib.sha256(token.encode()).hexdigest()


def message_mac(key: str, correlation: bytes, payload: bytes) -> str:
    """The ``smartpole-mac`` of an MQTT message; ``key`` is a token hash."""
    mac = hmac.new(bytes.fromhex(key), len(correlation).to_bytes(2, "big") + correlation, hashlib.sha256)
    mac.update(payload)
    return mac.hexdigest()


def mac_matches(keys: list[str], correlation: bytes, payload: bytes, mac: str | None) -> bool:
    """True if ``mac`` was made with one of ``keys`` (a pole may hold several tokens)."""
    if not mac:
        return False
    return any(hmac.compare_digest(message_mac(key, correlation, payload), mac) for key in keys)
