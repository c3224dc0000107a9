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

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from receiver.store.analytics import AirRow, CountsQuery, SpeedRow, TrafficRow, Window
from sync.overlays import EMPTY_VERSION, effective_overlay, overlay_version
from sync.protocol import Rejection, WireEvent

# Schema migrations are numbered; each backend lists its own statements per version.
# 2: tokens get a public id (the first 12 hex digits of their hash) and the time of their last use.
# 4: the fleet registry: admin tokens; poles get a name, a location, first contact, revocation, the
#    configuration versions (target and applied) and the figures fleet metrics read; pole_tags and
#    config_overlays (remote configuration per pole and per tag).
# 5: analytics rollups (receiver/store/rollups.py), built from the events already stored.
# 6: the dashboard's human users (scrypt password hashes), their sessions (only a hash of each
#    session id) and the history of configuration overlays.
# 7: retention. PostgreSQL: events range-partitioned by the event's ts, with a default partition,
#    and event_keys (pole_id, event_id) beside it for the unique key; SQLite: an index on (type, ts).
SCHEMA_VERSION = 7
TOKEN_ID_LENGTH = 12
ROLES = ("pole", "reader", "admin")
USER_ROLES = ("reader", "admin")  # a human logs in to the dashboard as one of these
USER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
Scope = Literal["pole", "tag"]


def token_id_of(token_hash: str) -> str:
    """A token's public id: not secret (it is part of a one-way hash), shown in listings and used to revoke."""
    return token_hash[:TOKEN_ID_LENGTH]


@dataclass(frozen=True, slots=True)
class TokenInfo:
    role: str  # "pole", "reader" or "admin"
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
    config_target: str | None = None  # the pole's target config version, read by the same statement


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
    """A registered pole: what it was registered with, and what its batches said last."""

    pole_id: str
    last_seen: float | None  # last contact (its last batch)
    max_seq: int
    events_total: int
    status: dict[str, Any] | None  # the status block of its last batch that had one
    name: str | None = None
    lat: float | None = None
    lon: float | None = None
    tags: list[str] = field(default_factory=list)
    created_at: float | None = None
    first_seen: float | None = None  # first contact
    revoked_at: float | None = None  # every token revoked; events and history stay
    config_target: str = EMPTY_VERSION  # the version of its effective overlay (what it should run)
    config_applied: str | None = None  # the version its last status block says it runs
    config_error: str | None = None  # why it could not apply the target, as it reported
    backlog: int | None = None  # events waiting in its outbox, all priorities
    oldest_age_s: float | None = None
    clock_skew_s: float | None = None  # its clock minus GPS time

    def online(self, now: float, window_s: float) -> bool:
        return self.revoked_at is None and self.last_seen is not None and now - self.last_seen <= window_s


POLE_COLUMNS = (
    "pole_id, last_seen, max_seq, events_total, status, name, lat, lon, created_at, first_seen, revoked_at,"
    " config_target, config_applied, config_error, backlog, oldest_age_s, clock_skew_s"
)


def pole_state(row: Any, status: dict[str, Any] | None, tags: list[str]) -> PoleState:
    """A :class:`PoleState` from a row of ``POLE_COLUMNS`` (its status decoded) and its tags."""
    return PoleState(
        row[0], row[1], row[2], row[3], status, row[5], row[6], row[7], tags, *(row[i] for i in range(8, 17))
    )


@dataclass(frozen=True, slots=True)
class PoleQuery:
    """Which poles ``list_poles`` returns: filters, and the page (pole ids after ``after``)."""

    tag: str | None = None
    online: bool | None = None
    online_since: float = 0.0  # with ``online``: poles heard from since this time are online
    revoked: bool | None = None
    after: str | None = None
    limit: int = 100

    def conditions(self) -> list[tuple[str, Any]]:
        """The filters in force as (SQL condition with one placeholder ``{}``, value)."""
        wanted: list[tuple[str, Any]] = [
            ("pole_id > {}", self.after),
            ("pole_id IN (SELECT pole_id FROM pole_tags WHERE tag = {})", self.tag),
        ]
        if self.online is not None:
            online = "(revoked_at IS NULL AND last_seen >= {})"
            wanted.append((online if self.online else f"NOT coalesce({online}, false)", self.online_since))
        if self.revoked is not None:
            wanted.append(("revoked_at IS NOT NULL" if self.revoked else "revoked_at IS NULL", None))
        return [(sql, value) for sql, value in wanted if value is not None or "{}" not in sql]


@dataclass(frozen=True, slots=True)
class PolePosition:
    """What a map needs of a pole: where it is and whether it is heard from."""

    pole_id: str
    name: str | None
    lat: float | None
    lon: float | None
    last_seen: float | None
    revoked_at: float | None

    def online(self, now: float, window_s: float) -> bool:
        return self.revoked_at is None and self.last_seen is not None and now - self.last_seen <= window_s


POSITION_COLUMNS = "pole_id, name, lat, lon, last_seen, revoked_at"


@dataclass(frozen=True, slots=True)
class PolePage:
    poles: list[PoleState]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class PoleChanges:
    """What ``PATCH /v1/poles/{id}`` changes; ``fields`` holds the given ones of name, lat and lon
    (None clears), ``tags`` the new tags (None: unchanged)."""

    fields: dict[str, Any] = field(default_factory=dict)
    tags: list[str] | None = None


@dataclass(frozen=True, slots=True)
class Overlay:
    """A stored configuration overlay of one pole or one tag."""

    scope: Scope
    name: str
    overlay: dict[str, Any]
    version: str
    updated_at: float
    updated_by: str | None


def target_version(layers: list[Overlay]) -> str:
    """The version of the effective overlay of a pole whose layers are ``layers`` (tags by name, then its own)."""
    return overlay_version(effective_overlay(layer.overlay for layer in layers))


def layers_by_pole(
    pole_ids: list[str], tags: list[tuple[str, str]], overlays: list[Overlay]
) -> dict[str, list[Overlay]]:
    """Each pole's layers in merge order, from (pole id, tag) rows and the overlays they reach."""
    found = {(o.scope, o.name): o for o in overlays}
    tags_of: dict[str, list[str]] = {}
    for pole, tag in tags:
        tags_of.setdefault(pole, []).append(tag)
    out = {}
    for pole in pole_ids:
        layers = [found[("tag", t)] for t in sorted(tags_of.get(pole, [])) if ("tag", t) in found]
        own = found.get(("pole", pole))
        out[pole] = layers + ([own] if own is not None else [])
    return out


def target_versions(layers: dict[str, list[Overlay]]) -> dict[str, str]:
    """The target version of each pole; poles with the same layers share one computation."""
    done: dict[tuple[tuple[str, str], ...], str] = {}
    out = {}
    for pole, mine in layers.items():
        key = tuple((o.scope, o.name) for o in mine)
        if key not in done:
            done[key] = target_version(mine)
        out[pole] = done[key]
    return out


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """One change of a pole's or a tag's overlay: the version it set (``overlay`` None: removed)."""

    scope: Scope
    name: str
    version: str
    overlay: dict[str, Any] | None
    changed_at: float
    changed_by: str | None


@dataclass(frozen=True, slots=True)
class User:
    """A human who logs in to the dashboard."""

    name: str
    role: str  # one of USER_ROLES
    password_hash: str  # scrypt, see httpkit.passwords
    created_at: float


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in dashboard session, as found by the hash of its id."""

    user: str
    role: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class FleetSummary:
    """The fleet's figures for ``/metrics``, from one query."""

    online: int
    offline: int
    revoked: int
    worst_backlog: int
    worst_oldest_age_s: float
    worst_clock_skew_s: float  # the largest difference either way
    config_behind: int  # active poles whose applied version is not their target
    config_errors: int  # active poles reporting an error applying their configuration


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Database connections of this process: ``size`` open of at most ``max_size``, ``in_use`` of them busy."""

    size: int
    max_size: int
    in_use: int

    @property
    def idle(self) -> int:
        return self.size - self.in_use


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class StatusFigures:
    """What the fleet view and metrics read from a pole's status block, kept in columns of their own."""

    config_applied: str | None
    config_error: str | None
    backlog: int | None
    oldest_age_s: float | None
    clock_skew_s: float | None

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> StatusFigures:
        backlog = status.get("backlog")
        counts = [v for v in backlog.values() if _number(v) is not None] if isinstance(backlog, Mapping) else []
        clock = status.get("clock")
        skew = _number(clock.get("skew_s")) if isinstance(clock, Mapping) else None
        total = int(sum(counts)) if counts else None
        return cls(
            _text(status.get("config_version"), 64),
            _text(status.get("config_error"), 2000),
            total if total is not None and abs(total) < 2**63 else None,
            _number(status.get("oldest_age_s")),
            skew,
        )


DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class RetentionRules:
    """Days an event is kept by its type (``types``) or else ``default_days``; 0 keeps forever."""

    default_days: int = 0
    types: Mapping[str, int] = field(default_factory=dict)

    def cutoff(self, type_: str, now: float) -> float | None:
        """Events of ``type_`` stamped before this time are expired; None: kept forever."""
        days = self.types.get(type_, self.default_days)
        return None if days == 0 else now - days * DAY_S

    def newest_cutoff(self, now: float) -> float | None:
        """The cutoff of the shortest retention: nothing at or after it is expired; None: nothing expires."""
        days = [d for d in (self.default_days, *self.types.values()) if d > 0]
        return now - min(days) * DAY_S if days else None

    def oldest_cutoff(self, now: float) -> float | None:
        """Before this time every event is expired, whatever its type; None when some type is kept forever."""
        days = [self.default_days, *self.types.values()]
        return None if 0 in days else now - max(days) * DAY_S


@dataclass(frozen=True, slots=True)
class PartitionLayout:
    """PostgreSQL's event partitions: days of event time each, kept created how far ahead, and how long
    maintenance waits for a table lock before leaving that step to its next run."""

    days: int = 1
    ahead_days: int = 7
    lock_timeout_s: float = 2.0


@dataclass(slots=True)
class MaintenanceReport:
    """What one maintenance run did. ``media`` holds the sha256 of every file the removed events referred to
    (candidates for deletion: other events may still refer to them)."""

    partitions_created: int = 0
    partitions_dropped: int = 0
    rows_dropped: int = 0  # events gone with dropped partitions
    rows_trimmed: int = 0  # events deleted from partitions that stay (SQLite: every expired event)
    deferred: int = 0  # steps left to the next run (a table lock not granted in time)
    media: set[str] = field(default_factory=set)
    skipped: str | None = None  # why nothing was done (another process is maintaining)


class StoreError(Exception):
    """The store cannot serve right now (database down); callers answer 503."""


def refused_by_database(exc: BaseException) -> str:
    """The reason given to a pole for an event its database refused: the error's class and first line."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"the database refused this event ({type(exc).__name__}: {first[:200]})"


def schema_problem(current: int, needed: int) -> str | None:
    """Why a schema at version ``current`` cannot serve a receiver whose migrations end at ``needed``.
    A newer schema is fine: migrations only add, and during a rolling update the old receivers must
    stay ready while the first new one has migrated."""
    if current < needed:
        return f"database schema is at version {current}, this receiver needs {needed}: migrations are behind"
    return None


class Store(Protocol):
    """What the receiver needs from a database."""

    backend: str

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def schema_behind(self) -> str | None:
        """Why the database's schema is too old for this receiver, or None when it is current."""
        ...

    async def lookup_token(self, token_hash: str) -> TokenInfo | None: ...

    async def pole_keys(self, pole_id: str) -> list[str]:
        """The hashes of the pole's tokens that are not revoked (the keys of its MQTT messages)."""
        ...

    async def add_token(self, token_hash: str, role: str, pole_id: str | None, name: str | None) -> None: ...

    async def revoke_pole(self, pole_id: str) -> int:
        """Revoke every token of the pole and mark it revoked (its events and history stay); how
        many tokens were active."""
        ...

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

    async def recent_events(self, pole_id: str, limit: int) -> list[dict[str, Any]]:
        """The pole's ``limit`` latest events by their time, newest first (as ``GET /v1/events`` shows them)."""
        ...

    async def poles(self) -> list[PoleState]:
        """Every pole, by id."""
        ...

    async def count_online(self, since: float) -> int: ...

    # The fleet registry and remote configuration.

    async def register_pole(
        self,
        pole_id: str,
        token_hash: str,
        now: float,
        name: str | None = None,
        lat: float | None = None,
        lon: float | None = None,
        tags: list[str] | None = None,
    ) -> bool:
        """Register a new pole with its first token; False (nothing written) if the pole exists."""
        ...

    async def get_pole(self, pole_id: str) -> PoleState | None: ...

    async def list_poles(self, query: PoleQuery) -> PolePage: ...

    async def pole_positions(self, query: PoleQuery) -> list[PolePosition]:
        """The poles ``query`` filters (its cursor and limit as in ``list_poles``), for a map: no status blocks."""
        ...

    async def update_pole(self, pole_id: str, changes: PoleChanges) -> PoleState | None:
        """Apply ``changes``; new tags move the pole's target config version. None if no such pole."""
        ...

    async def set_pole_tags(self, pole_id: str, tags: list[str]) -> None: ...

    async def set_overlay(
        self, scope: Scope, name: str, overlay: dict[str, Any] | None, now: float, by: str | None
    ) -> dict[str, str]:
        """Store (or with None, remove) the overlay of a pole or a tag and move the target version
        of every pole it reaches; {pole id: its new target version}."""
        ...

    async def get_overlay(self, scope: Scope, name: str) -> Overlay | None: ...

    async def pole_overlays(self, pole_id: str) -> list[Overlay]:
        """The layers of a pole's effective overlay, in merge order: its tags' by tag name, then its own."""
        ...

    async def config_history(self, scope: Scope, name: str, limit: int) -> list[ConfigChange]:
        """The latest ``limit`` changes of one overlay, newest first."""
        ...

    async def fleet_summary(self, online_since: float) -> FleetSummary: ...

    # The dashboard's users and sessions.

    async def put_user(self, name: str, role: str, password_hash: str, now: float) -> bool:
        """Create a user, or give an existing one this role and password and end its sessions;
        True if created."""
        ...

    async def get_user(self, name: str) -> User | None: ...

    async def add_session(self, session_hash: str, user: str, now: float, expires_at: float) -> None:
        """Store a new session (and forget the expired ones)."""
        ...

    async def lookup_session(self, session_hash: str, now: float) -> Session | None:
        """The session, if it exists, has not expired and its user still exists."""
        ...

    async def delete_session(self, session_hash: str) -> None: ...

    # Analytics, from the rollups (receiver/store/analytics.py); ``limit`` bounds the rows.

    async def analytics_counts(self, query: CountsQuery) -> list[tuple[Any, int]]:
        """(key, count) by key: a type, a pole id, or the start of an hour or a day (epoch seconds)."""
        ...

    async def analytics_hours_by_type(self, window: Window) -> list[tuple[int, str, int]]:
        """(hour, type, count) by hour and type."""
        ...

    async def analytics_traffic(self, window: Window, limit: int) -> list[TrafficRow]: ...

    async def analytics_air(self, window: Window, limit: int) -> list[AirRow]: ...

    async def analytics_speed(self, window: Window, limit: int) -> list[SpeedRow]: ...

    def pool_stats(self) -> PoolStats: ...

    # Retention.

    async def maintain(
        self, rules: RetentionRules, layout: PartitionLayout, now: float, retention: bool = True
    ) -> MaintenanceReport:
        """Create the event partitions ahead of ``now`` (PostgreSQL) and, with ``retention``, remove expired
        events: whole partitions when all they hold is expired, else the expired types, never from the
        partition being written. One process at a time: a second one gets a report with ``skipped``."""
        ...

    async def release_media(self, sha256s: list[str], delete: Callable[[str], Awaitable[None]]) -> list[str]:
        """Of ``sha256s``, those no stored event refers to: forgotten by the store, each file deleted by
        ``delete`` (which never raises) before the store commits forgetting it. Until then a batch that
        refers to the file, or an upload of it, waits; after, the batch is told the file is missing and the
        upload stores it again."""
        ...


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
