"""The receiver's storage interface, shared by the SQLite and PostgreSQL backends.

Effectively-once delivery rests on one unique key, (pole id, event id): a
replayed batch inserts nothing new and its events come back as duplicates.
A batch is stored in one transaction together with the pole's last-seen
time and status, so a reply never claims more than the database holds.

Errors are of two kinds. A *data* error (the database refuses a value of one
event) costs that event alone: the batch is written one event at a time to find
which, and those come back in ``InsertResult.rejected`` for the pole to
dead-letter. Anything else (connection lost, database down) is a
:class:`StoreError`, answered 503: the pole retries the batch later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sync.protocol import Rejection, WireEvent

# Schema migrations are numbered; each backend lists its own statements per version.
# 2: tokens get a public id (the first 12 hex digits of their hash) and the time of their last use.
SCHEMA_VERSION = 2
TOKEN_ID_LENGTH = 12


def token_id_of(token_hash: str) -> str:
    """A token's public id: not secret (it is part of a one-way hash), shown in listings and used to revoke."""
    return token_hash[:TOKEN_ID_LENGTH]


@dataclass(frozen=True, slots=True)
class TokenInfo:
    role: str  # "pole" or "reader"
    pole_id: str | None
    name: str | None
    revoked: bool
    token_id: str = ""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as listings show it: everything but the secret, which is never stored."""

    token_id: str
    role: str
    pole_id: str | None
    name: str | None
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class InsertResult:
    accepted: list[str]
    duplicates: list[str]
    missing_media: list[str]
    rejected: list[Rejection] = field(default_factory=list)  # events the database refused (a data error)


@dataclass(frozen=True, slots=True)
class EventQuery:
    pole_id: str | None = None
    type: str | None = None
    since: float | None = None
    until: float | None = None
    after: int = 0  # the cursor: events stored after this position
    limit: int = 100

    def conditions(self) -> list[tuple[str, Any]]:
        """The filters in force as (SQL condition with one placeholder ``{}``, value), cursor first."""
        wanted = [
            ("n > {}", self.after),
            ("pole_id = {}", self.pole_id),
            ("type = {}", self.type),
            ("ts >= {}", self.since),
            ("ts < {}", self.until),
        ]
        return [(sql, value) for sql, value in wanted if value is not None]


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[dict[str, Any]]
    next_cursor: int | None


@dataclass(frozen=True, slots=True)
class PoleState:
    pole_id: str
    last_seen: float | None
    max_seq: int
    events_total: int
    status: dict[str, Any] | None


class StoreError(Exception):
    """The store cannot serve right now (database down); callers answer 503."""


def refused_by_database(exc: BaseException) -> str:
    """The reason given to a pole for an event its database refused: the error's class and first line."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"the database refused this event ({type(exc).__name__}: {first[:200]})"


class Store(Protocol):
    """What the receiver needs from a database."""

    backend: str

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def lookup_token(self, token_hash: str) -> TokenInfo | None: ...

    async def pole_keys(self, pole_id: str) -> list[str]:
        """The hashes of the pole's tokens that are not revoked (the keys of its MQTT messages)."""
        ...

    async def add_token(self, token_hash: str, role: str, pole_id: str | None, name: str | None) -> None: ...

    async def revoke_pole(self, pole_id: str) -> int: ...

    async def list_tokens(self) -> list[TokenRecord]: ...

    async def tokens_with_prefix(self, prefix: str) -> list[TokenRecord]:
        """Tokens whose id starts with ``prefix`` (lowercase hex)."""
        ...

    async def revoke_token(self, token_id: str) -> bool:
        """Revoke one token by its full id; False if there is none or it was already revoked."""
        ...

    async def touch_token(self, token_id: str, when: float) -> None:
        """Record a use of the token (callers do this at most once a minute per token)."""
        ...

    async def insert_batch(
        self, pole_id: str, batch_id: str, events: list[WireEvent], status: dict[str, Any] | None, now: float
    ) -> InsertResult: ...

    async def add_media(self, sha256: str, size: int, pole_id: str, now: float) -> bool: ...

    async def has_media(self, sha256: str) -> bool: ...

    async def query_events(self, query: EventQuery) -> EventPage: ...

    async def poles(self) -> list[PoleState]: ...

    async def count_online(self, since: float) -> int: ...


def event_row(event: WireEvent) -> tuple[Any, ...]:
    """The columns both backends store for an event, in their shared order."""
    loc = event.location
    return (
        event.id,
        event.seq,
        event.ts,
        event.type,
        event.priority,
        loc.lat if loc else None,
        loc.lon if loc else None,
        loc.source if loc else None,
    )


def public_event(
    pole_id: str,
    event_id: str,
    seq: int,
    ts: float,
    type_: str,
    priority: str,
    lat: float | None,
    lon: float | None,
    source: str | None,
    data: Any,
    media: Any,
    received_at: float,
) -> dict[str, Any]:
    """An event as ``GET /v1/events`` returns it."""
    return {
        "pole_id": pole_id,
        "id": event_id,
        "seq": seq,
        "ts": ts,
        "type": type_,
        "priority": priority,
        "location": None if lat is None else {"lat": lat, "lon": lon, "source": source},
        "data": data,
        "media": media,
        "received_at": received_at,
    }
