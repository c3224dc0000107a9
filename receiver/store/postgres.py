"""PostgreSQL backend (asyncpg pool): the city's store, shared by any number of receiver replicas.

A batch is one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING
RETURNING``: PostgreSQL itself tells which events were new, so concurrent
replicas receiving the same replay cannot both count it as accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import orjson

from receiver.store.base import (
    POLE_COLUMNS,
    EventPage,
    EventQuery,
    FleetSummary,
    InsertResult,
    Overlay,
    PoleChanges,
    PolePage,
    PoleQuery,
    PoleState,
    PoolStats,
    Scope,
    StatusFigures,
    StoreError,
    TokenInfo,
    TokenRecord,
    event_row,
    layers_by_pole,
    pole_state,
    public_event,
    refused_by_database,
    schema_problem,
    target_versions,
    token_id_of,
)
from sync.overlays import overlay_version
from sync.protocol import Rejection, WireEvent

# Errors in the values of one event (class 22, "data exception": NUL in text, bigint overflow...,
# and class 54, "program limit exceeded": a value too deep or too large); all else is unavailability.
_DATA_ERRORS = (asyncpg.DataError, asyncpg.ProgramLimitExceededError)
_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


@contextlib.contextmanager
def _available() -> Iterator[None]:
    """Any database error inside becomes a :class:`StoreError`: the caller answers 503, logs no traceback."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreError(str(exc)) from exc


# Any constant: replicas starting together serialise their migrations on it.
_MIGRATION_LOCK = 0x5350_0001

MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE tokens (
            token_hash TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('pole', 'reader')),
            pole_id TEXT,
            name TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION
        )""",
        "CREATE INDEX tokens_by_pole ON tokens (pole_id)",
        """CREATE TABLE poles (
            pole_id TEXT PRIMARY KEY,
            created_at DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION,
            last_batch_id TEXT,
            max_seq BIGINT NOT NULL DEFAULT 0,
            events_total BIGINT NOT NULL DEFAULT 0,
            status JSONB
        )""",
        """CREATE TABLE events (
            n BIGSERIAL PRIMARY KEY,
            pole_id TEXT NOT NULL,
            event_id UUID NOT NULL,
            seq BIGINT NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            type TEXT NOT NULL,
            priority TEXT NOT NULL,
            lat DOUBLE PRECISION,
            lon DOUBLE PRECISION,
            location_source TEXT,
            data JSONB NOT NULL,
            media JSONB NOT NULL,
            received_at DOUBLE PRECISION NOT NULL,
            batch_id TEXT NOT NULL,
            UNIQUE (pole_id, event_id)
        )""",
        "CREATE INDEX events_by_pole_ts ON events (pole_id, ts)",
        """CREATE TABLE media (
            sha256 TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            pole_id TEXT NOT NULL,
            stored_at DOUBLE PRECISION NOT NULL
        )""",
    ],
    2: [
        "ALTER TABLE tokens ADD COLUMN token_id TEXT",
        "UPDATE tokens SET token_id = substr(token_hash, 1, 12)",
        "ALTER TABLE tokens ALTER COLUMN token_id SET NOT NULL",
        "CREATE UNIQUE INDEX tokens_by_id ON tokens (token_id)",
        "ALTER TABLE tokens ADD COLUMN last_used_at DOUBLE PRECISION",
    ],
    4: [
        "ALTER TABLE tokens DROP CONSTRAINT tokens_role_check",
        "ALTER TABLE tokens ADD CONSTRAINT tokens_role_check CHECK (role IN ('pole', 'reader', 'admin'))",
        "ALTER TABLE poles ADD COLUMN name TEXT",
        "ALTER TABLE poles ADD COLUMN lat DOUBLE PRECISION",
        "ALTER TABLE poles ADD COLUMN lon DOUBLE PRECISION",
        "ALTER TABLE poles ADD COLUMN first_seen DOUBLE PRECISION",
        "ALTER TABLE poles ADD COLUMN revoked_at DOUBLE PRECISION",
        "ALTER TABLE poles ADD COLUMN config_target TEXT NOT NULL DEFAULT '0'",
        "ALTER TABLE poles ADD COLUMN config_applied TEXT",
        "ALTER TABLE poles ADD COLUMN config_error TEXT",
        "ALTER TABLE poles ADD COLUMN backlog BIGINT",
        "ALTER TABLE poles ADD COLUMN oldest_age_s DOUBLE PRECISION",
        "ALTER TABLE poles ADD COLUMN clock_skew_s DOUBLE PRECISION",
        "UPDATE poles SET first_seen = last_seen",  # the best known: first contact is not older than that
        # Poles whose every token was revoked before this version are revoked poles.
        "UPDATE poles SET revoked_at = (SELECT max(t.revoked_at) FROM tokens t WHERE t.pole_id = poles.pole_id)"
        " WHERE EXISTS (SELECT 1 FROM tokens t WHERE t.pole_id = poles.pole_id)"
        " AND NOT EXISTS (SELECT 1 FROM tokens t WHERE t.pole_id = poles.pole_id AND t.revoked_at IS NULL)",
        # The same table as analytics' migration 3 (either may come first).
        "CREATE TABLE IF NOT EXISTS pole_tags (pole_id TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (tag, pole_id))",
        "CREATE INDEX IF NOT EXISTS pole_tags_by_pole ON pole_tags (pole_id)",
        """CREATE TABLE config_overlays (
            scope TEXT NOT NULL CHECK (scope IN ('pole', 'tag')),
            name TEXT NOT NULL,
            overlay JSONB NOT NULL,
            version TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            updated_by TEXT,
            PRIMARY KEY (scope, name)
        )""",
    ],
}

# Any constant: changes of remote configuration and tags serialise on it, so two admins changing a
# tag's overlay and a pole's tags at once cannot leave the pole with a stale target version.
_CONFIG_LOCK = 0x5350_0004

# The pole's row, with a batch: last (and first) contact, and its status block when it has one.
_TOUCH_POLE = (
    "UPDATE poles SET last_seen = $2, first_seen = coalesce(first_seen, $2), last_batch_id = $3,"
    " max_seq = greatest(max_seq, $4), events_total = events_total + $5 WHERE pole_id = $1 RETURNING config_target"
)
_TOUCH_POLE_WITH_STATUS = (
    "UPDATE poles SET last_seen = $2, first_seen = coalesce(first_seen, $2), last_batch_id = $3,"
    " max_seq = greatest(max_seq, $4), events_total = events_total + $5, status = $6::jsonb,"
    " config_applied = $7, config_error = $8, backlog = $9, oldest_age_s = $10, clock_skew_s = $11"
    " WHERE pole_id = $1 RETURNING config_target"
)

_TOKEN_COLUMNS = "token_id, role, pole_id, name, created_at, last_used_at, revoked_at"

_INSERT = """
INSERT INTO events (pole_id, event_id, seq, ts, type, priority, lat, lon, location_source,
                    data, media, received_at, batch_id)
SELECT $1, e.event_id::uuid, e.seq, e.ts, e.type, e.priority, e.lat, e.lon, e.src,
       e.data::jsonb, e.media::jsonb, $2, $3
FROM unnest($4::text[], $5::bigint[], $6::float8[], $7::text[], $8::text[], $9::float8[],
            $10::float8[], $11::text[], $12::text[], $13::text[])
     AS e(event_id, seq, ts, type, priority, lat, lon, src, data, media)
ON CONFLICT (pole_id, event_id) DO NOTHING
RETURNING event_id::text
"""


# A batch in one statement: its new events, its pole's row (counting only the new ones) and which of
# its media are stored, atomic without a transaction of its own. The events go as one JSON document
# (``events_json``): one parameter to encode instead of ten arrays, half the client's CPU. A data
# error in any event aborts the whole statement, and the batch is then written event by event
# (``_insert_one_by_one``).
_INSERT_AT_ONCE = """
WITH new AS (
    INSERT INTO events (pole_id, event_id, seq, ts, type, priority, lat, lon, location_source,
                        data, media, received_at, batch_id)
    SELECT $1, e.i, e.s, e.t, e.y, e.p, e.a, e.o, e.c, e.d, e.m, $2, $3
    FROM jsonb_to_recordset($4::text::jsonb)
         AS e(i uuid, s bigint, t float8, y text, p text, a float8, o float8, c text, d jsonb, m jsonb)
    ON CONFLICT (pole_id, event_id) DO NOTHING
    RETURNING event_id::text AS id
), pole AS (
    UPDATE poles SET last_seen = $2, first_seen = coalesce(first_seen, $2), last_batch_id = $3,
        max_seq = greatest(max_seq, $5), events_total = events_total + (SELECT count(*) FROM new){status}
    WHERE pole_id = $1 RETURNING config_target
)
SELECT array(SELECT id FROM new), (SELECT config_target FROM pole),
       array(SELECT sha256 FROM media WHERE sha256 = any($6::text[]))
"""
_INSERT_AT_ONCE_WITH_STATUS = _INSERT_AT_ONCE.replace(
    "{status}",
    ", status = $7::jsonb, config_applied = $8, config_error = $9, backlog = $10, oldest_age_s = $11,"
    " clock_skew_s = $12",
)
_INSERT_AT_ONCE = _INSERT_AT_ONCE.replace("{status}", "")


def _walk_large_floats(value: Any) -> Any:
    if isinstance(value, float) and abs(value) >= 1e16:
        return orjson.Fragment(format(value, ".1f"))
    if isinstance(value, dict):
        return {k: _walk_large_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk_large_floats(v) for v in value]
    return value


def events_json(events: list[WireEvent]) -> str:
    """The events as the JSON array ``_INSERT_AT_ONCE`` reads, large floats written as :func:`jsonb_text` does."""
    rows = []
    for e in events:
        lat, lon, src = (e.location.lat, e.location.lon, e.location.source) if e.location else (None, None, None)
        rows.append(
            {"i": e.id, "s": e.seq, "t": e.ts, "y": e.type, "p": e.priority, "a": lat, "o": lon, "c": src}
            | {"d": e.data, "m": e.media}
        )
    text = orjson.dumps(rows)
    if b"e+" in text:
        text = orjson.dumps(_walk_large_floats(rows))
    return text.decode()


def jsonb_text(data: Any) -> str:
    """``data`` as JSON text that jsonb keeps as the same value. orjson writes a float from 1e16 up
    in exponent form (``6.006290159228115e+16``); jsonb stores numbers as decimals and would give
    it back as the integer 60062901592281150, neither a float nor the float's value. Written out
    with a decimal point (``60062901592281152.0``), it comes back as that very float."""
    text = orjson.dumps(data)
    if b"e+" in text:  # rare: only then walk the values
        text = orjson.dumps(_walk_large_floats(data))
    return text.decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(
            kind, schema="pg_catalog", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads
        )


async def _migrate(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        for version in sorted(v for v in MIGRATIONS if v > current):
            for statement in MIGRATIONS[version]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)


async def _session_kept(conn: asyncpg.Connection) -> None:
    """On release to the pool, asyncpg still ends any open transaction; this replaces only its reset
    query (UNLISTEN, RESET ALL, unlock all, CLOSE ALL), a round trip per request for session state
    this store never sets: it LISTENs to nothing, SETs nothing and takes only transaction-scoped
    advisory locks."""


class PostgresStore:
    backend = "postgresql"
    _pool: asyncpg.Pool

    def __init__(self) -> None:
        self._migrated = False
        self._migrating = asyncio.Lock()

    @classmethod
    async def open(cls, url: str, pool_size: int = 8, wait: bool = True) -> PostgresStore:
        """The pool connects lazily and brings the schema current on its first connection, so a receiver
        can start (alive, not ready) while the database is away; ``wait`` connects (and migrates) now,
        raising :class:`StoreError` if it cannot."""
        store = cls()
        try:
            store._pool = await asyncpg.create_pool(
                url, min_size=0, max_size=pool_size, init=store._init_connection, reset=_session_kept
            )
            if wait:
                await store._pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        return store

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        if not self._migrated:
            async with self._migrating:
                if not self._migrated:
                    await _migrate(conn)
                    self._migrated = True

    async def schema_behind(self) -> str | None:
        with _available():
            current = await self._pool.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        return schema_problem(int(current), max(MIGRATIONS))

    async def close(self) -> None:
        await self._pool.close()

    async def ping(self) -> None:
        try:
            await self._pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(str(exc)) from exc

    async def lookup_token(self, token_hash: str) -> TokenInfo | None:
        with _available():
            row = await self._pool.fetchrow(
                "SELECT role, pole_id, name, revoked_at, token_id FROM tokens WHERE token_hash = $1", token_hash
            )
            return None if row is None else TokenInfo(row[0], row[1], row[2], row[3] is not None, row[4])

    async def pole_keys(self, pole_id: str) -> list[str]:
        try:
            rows = await self._pool.fetch(
                "SELECT token_hash FROM tokens WHERE pole_id = $1 AND role = 'pole' AND revoked_at IS NULL", pole_id
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(str(exc)) from exc
        return [str(r[0]) for r in rows]

    async def add_token(self, token_hash: str, role: str, pole_id: str | None, name: str | None) -> None:
        with _available():
            now = time.time()
            async with self._pool.acquire() as conn, conn.transaction():
                if pole_id is not None:
                    await conn.execute(
                        "INSERT INTO poles (pole_id, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING", pole_id, now
                    )
                    await conn.execute("UPDATE poles SET revoked_at = NULL WHERE pole_id = $1", pole_id)
                await conn.execute(
                    "INSERT INTO tokens (token_hash, token_id, role, pole_id, name, created_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6)",
                    token_hash,
                    token_id_of(token_hash),
                    role,
                    pole_id,
                    name,
                    now,
                )

    async def revoke_pole(self, pole_id: str) -> int:
        with _available():
            now = time.time()
            async with self._pool.acquire() as conn, conn.transaction():
                result = await conn.execute(
                    "UPDATE tokens SET revoked_at = $1 WHERE pole_id = $2 AND revoked_at IS NULL", now, pole_id
                )
                await conn.execute(
                    "UPDATE poles SET revoked_at = coalesce(revoked_at, $1) WHERE pole_id = $2", now, pole_id
                )
            return int(result.split()[-1])

    async def list_tokens(self) -> list[TokenRecord]:
        with _available():
            rows = await self._pool.fetch(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY created_at, token_id")
            return [TokenRecord(*r) for r in rows]

    async def tokens_with_prefix(self, prefix: str) -> list[TokenRecord]:
        with _available():
            rows = await self._pool.fetch(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE starts_with(token_id, $1) ORDER BY token_id", prefix
            )
            return [TokenRecord(*r) for r in rows]

    async def revoke_token(self, token_id: str) -> bool:
        with _available():
            result = await self._pool.execute(
                "UPDATE tokens SET revoked_at = $1 WHERE token_id = $2 AND revoked_at IS NULL", time.time(), token_id
            )
            return result.endswith(" 1")

    async def touch_token(self, token_id: str, when: float) -> None:
        with _available():
            await self._pool.execute(
                "UPDATE tokens SET last_used_at = greatest(coalesce(last_used_at, 0), $2) WHERE token_id = $1",
                token_id,
                when,
            )

    async def insert_batch(
        self, pole_id: str, batch_id: str, events: list[WireEvent], status: dict[str, Any] | None, now: float
    ) -> InsertResult:
        shas = sorted({sha for e in events for sha in e.media})
        try:
            async with self._pool.acquire() as conn:
                try:
                    # The common case: one statement, one round trip, atomic on its own.
                    inserted, target, have = await self._insert_at_once(
                        conn, pole_id, batch_id, now, events, shas, status
                    )
                    rejected: list[Rejection] = []
                except _DATA_ERRORS:  # nothing was written: find the event(s) the database refuses
                    inserted, target, have, rejected = await self._insert_one_by_one(
                        conn, pole_id, batch_id, now, events, status
                    )
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        refused = {r.id for r in rejected}
        kept = [e for e in events if e.id not in refused]
        kept_shas = sorted({sha for e in kept for sha in e.media})
        return InsertResult(
            accepted=[e.id for e in kept if e.id in inserted],
            duplicates=[e.id for e in kept if e.id not in inserted],
            missing_media=[s for s in kept_shas if s not in have],
            rejected=rejected,
            config_target=target,
        )

    @staticmethod
    async def _insert_at_once(
        conn: asyncpg.Connection,
        pole_id: str,
        batch_id: str,
        now: float,
        events: list[WireEvent],
        shas: list[str],
        status: dict[str, Any] | None,
    ) -> tuple[set[str], str | None, set[str]]:
        """The events, the pole's row and the media check in one statement: (new ids, the pole's
        target version, which of ``shas`` are stored)."""
        max_seq = max((e.seq for e in events), default=0)
        params: list[Any] = [pole_id, now, batch_id, events_json(events), max_seq, shas]
        if status is None:
            sql = _INSERT_AT_ONCE
        else:
            figures = StatusFigures.of(status)
            sql = _INSERT_AT_ONCE_WITH_STATUS
            params += [
                status,
                figures.config_applied,
                figures.config_error,
                figures.backlog,
                figures.oldest_age_s,
                figures.clock_skew_s,
            ]
        row = await conn.fetchrow(sql, *params)
        assert row is not None
        return set(row[0]), row[1], set(row[2])

    async def _insert_one_by_one(
        self,
        conn: asyncpg.Connection,
        pole_id: str,
        batch_id: str,
        now: float,
        events: list[WireEvent],
        status: dict[str, Any] | None,
    ) -> tuple[set[str], str | None, set[str], list[Rejection]]:
        """A batch the database refused a value of: each event in its own savepoint, the refused ones
        rejected, the others stored with the pole's row in one transaction."""
        rows = [(*event_row(e), jsonb_text(e.data), orjson.dumps(e.media).decode()) for e in events]
        rejected: list[Rejection] = []
        inserted: set[str] = set()
        async with conn.transaction():
            for event, row in zip(events, rows, strict=True):
                try:
                    async with conn.transaction():
                        inserted |= await self._insert(conn, pole_id, batch_id, now, [row])
                except _DATA_ERRORS as exc:
                    rejected.append(Rejection(id=event.id, reason=refused_by_database(exc)))
            refused = {r.id for r in rejected}
            kept = [e for e in events if e.id not in refused]
            touched = (pole_id, now, batch_id, max((e.seq for e in kept), default=0), len(inserted))
            if status is None:
                target = await conn.fetchval(_TOUCH_POLE, *touched)
            else:
                figures = StatusFigures.of(status)
                target = await conn.fetchval(
                    _TOUCH_POLE_WITH_STATUS,
                    *touched,
                    status,
                    figures.config_applied,
                    figures.config_error,
                    figures.backlog,
                    figures.oldest_age_s,
                    figures.clock_skew_s,
                )
            shas = sorted({sha for e in kept for sha in e.media})
            have = (
                {r[0] for r in await conn.fetch("SELECT sha256 FROM media WHERE sha256 = any($1::text[])", shas)}
                if shas
                else set()
            )
        return inserted, target, have, rejected

    @staticmethod
    async def _insert(
        conn: asyncpg.Connection, pole_id: str, batch_id: str, now: float, rows: list[tuple[Any, ...]]
    ) -> set[str]:
        """Insert ``rows`` in one statement; the ids that were new."""
        if not rows:
            return set()
        columns = [list(column) for column in zip(*rows, strict=True)]
        return {r[0] for r in await conn.fetch(_INSERT, pole_id, now, batch_id, *columns)}

    async def add_media(self, sha256: str, size: int, pole_id: str, now: float) -> bool:
        with _available():
            result = await self._pool.execute(
                "INSERT INTO media (sha256, size, pole_id, stored_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                sha256,
                size,
                pole_id,
                now,
            )
            return result.endswith(" 1")

    async def has_media(self, sha256: str) -> bool:
        with _available():
            return await self._pool.fetchval("SELECT 1 FROM media WHERE sha256 = $1", sha256) is not None

    async def query_events(self, query: EventQuery) -> EventPage:
        with _available():
            conditions = query.conditions()
            where = [sql.format(f"${i}") for i, (sql, _) in enumerate(conditions, 1)]
            params: list[Any] = [value for _, value in conditions]
            params.append(query.limit + 1)
            rows = await self._pool.fetch(
                "SELECT n, pole_id, event_id::text, seq, ts, type, priority, lat, lon, location_source, data, media,"
                f" received_at FROM events WHERE {' AND '.join(where)} ORDER BY n LIMIT ${len(params)}",
                *params,
            )
            more = len(rows) > query.limit
            rows = rows[: query.limit]
            return EventPage([public_event(*r[1:]) for r in rows], rows[-1][0] if more else None)

    async def poles(self) -> list[PoleState]:
        out: list[PoleState] = []
        after = None
        while True:
            page = await self.list_poles(PoleQuery(after=after, limit=1000))
            out += page.poles
            if page.next_cursor is None:
                return out
            after = page.next_cursor

    async def count_online(self, since: float) -> int:
        with _available():
            return int(await self._pool.fetchval("SELECT count(*) FROM poles WHERE last_seen >= $1", since))

    # ------------------------------------------------------------------ fleet registry

    @staticmethod
    async def _poles_where(conn: Any, where: str, *params: Any) -> list[PoleState]:
        rows = await conn.fetch(f"SELECT {POLE_COLUMNS} FROM poles WHERE {where}", *params)
        if not rows:
            return []
        tags: dict[str, list[str]] = {}
        for pole, tag in await conn.fetch(
            "SELECT pole_id, tag FROM pole_tags WHERE pole_id = any($1::text[]) ORDER BY tag", [r[0] for r in rows]
        ):
            tags.setdefault(pole, []).append(tag)
        return [pole_state(r, r[4], tags.get(r[0], [])) for r in rows]

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
        with _available():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _CONFIG_LOCK)
                result = await conn.execute(
                    "INSERT INTO poles (pole_id, created_at, name, lat, lon) VALUES ($1, $2, $3, $4, $5)"
                    " ON CONFLICT DO NOTHING",
                    pole_id,
                    now,
                    name,
                    lat,
                    lon,
                )
                if not result.endswith(" 1"):
                    return False
                await conn.execute(
                    "INSERT INTO tokens (token_hash, token_id, role, pole_id, name, created_at)"
                    " VALUES ($1, $2, 'pole', $3, NULL, $4)",
                    token_hash,
                    token_id_of(token_hash),
                    pole_id,
                    now,
                )
                if tags:
                    await self._set_tags(conn, pole_id, tags)
                return True

    async def get_pole(self, pole_id: str) -> PoleState | None:
        with _available():
            found = await self._poles_where(self._pool, "pole_id = $1", pole_id)
            return found[0] if found else None

    async def list_poles(self, query: PoleQuery) -> PolePage:
        with _available():
            where, params = [], []
            for sql, value in query.conditions():
                if "{}" in sql:
                    params.append(value)
                    sql = sql.format(f"${len(params)}")
                where.append(sql)
            params.append(query.limit + 1)
            clause = " AND ".join(where) or "true"
            poles = await self._poles_where(self._pool, f"{clause} ORDER BY pole_id LIMIT ${len(params)}", *params)
            more = len(poles) > query.limit
            poles = poles[: query.limit]
            return PolePage(poles, poles[-1].pole_id if more else None)

    async def update_pole(self, pole_id: str, changes: PoleChanges) -> PoleState | None:
        with _available():
            async with self._pool.acquire() as conn, conn.transaction():
                if changes.tags is not None:
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _CONFIG_LOCK)
                if await conn.fetchval("SELECT 1 FROM poles WHERE pole_id = $1 FOR UPDATE", pole_id) is None:
                    return None
                fields = {k: v for k, v in changes.fields.items() if k in ("name", "lat", "lon")}
                if fields:
                    assignments = ", ".join(f"{k} = ${n}" for n, k in enumerate(fields, 2))
                    await conn.execute(f"UPDATE poles SET {assignments} WHERE pole_id = $1", pole_id, *fields.values())
                if changes.tags is not None:
                    await self._set_tags(conn, pole_id, changes.tags)
            return await self.get_pole(pole_id)

    async def set_pole_tags(self, pole_id: str, tags: list[str]) -> None:
        with _available():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _CONFIG_LOCK)
                await self._set_tags(conn, pole_id, tags)

    async def _set_tags(self, conn: asyncpg.Connection, pole_id: str, tags: list[str]) -> None:
        await conn.execute("DELETE FROM pole_tags WHERE pole_id = $1", pole_id)
        if tags:
            await conn.executemany(
                "INSERT INTO pole_tags (pole_id, tag) VALUES ($1, $2)", [(pole_id, t) for t in sorted(set(tags))]
            )
        await self._retarget(conn, [pole_id])

    @staticmethod
    async def _layers_of(conn: Any, pole_ids: list[str]) -> dict[str, list[Overlay]]:
        """The layers of each pole's effective overlay, in merge order: two queries for any number of poles."""
        tags = await conn.fetch("SELECT pole_id, tag FROM pole_tags WHERE pole_id = any($1::text[])", pole_ids)
        rows = await conn.fetch(
            "SELECT scope, name, overlay, version, updated_at, updated_by FROM config_overlays"
            " WHERE (scope = 'pole' AND name = any($1::text[]))"
            " OR (scope = 'tag' AND name IN (SELECT tag FROM pole_tags WHERE pole_id = any($1::text[])))",
            pole_ids,
        )
        return layers_by_pole(pole_ids, [(r[0], r[1]) for r in tags], [Overlay(*r) for r in rows])

    async def _retarget(self, conn: asyncpg.Connection, pole_ids: list[str]) -> dict[str, str]:
        """Recompute the target version of ``pole_ids`` from their layers, in the caller's transaction."""
        targets = target_versions(await self._layers_of(conn, pole_ids))
        if targets:
            await conn.executemany("UPDATE poles SET config_target = $2 WHERE pole_id = $1", list(targets.items()))
        return targets

    async def set_overlay(
        self, scope: Scope, name: str, overlay: dict[str, Any] | None, now: float, by: str | None
    ) -> dict[str, str]:
        with _available():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _CONFIG_LOCK)
                if overlay is None:
                    await conn.execute("DELETE FROM config_overlays WHERE scope = $1 AND name = $2", scope, name)
                else:
                    await conn.execute(
                        "INSERT INTO config_overlays (scope, name, overlay, version, updated_at, updated_by)"
                        " VALUES ($1, $2, $3::jsonb, $4, $5, $6) ON CONFLICT (scope, name) DO UPDATE SET"
                        " overlay = excluded.overlay, version = excluded.version, updated_at = excluded.updated_at,"
                        " updated_by = excluded.updated_by",
                        scope,
                        name,
                        overlay,
                        overlay_version(overlay),
                        now,
                        by,
                    )
                if scope == "pole":
                    reached = [name]
                else:
                    reached = [r[0] for r in await conn.fetch("SELECT pole_id FROM pole_tags WHERE tag = $1", name)]
                return await self._retarget(conn, reached)

    async def get_overlay(self, scope: Scope, name: str) -> Overlay | None:
        with _available():
            row = await self._pool.fetchrow(
                "SELECT scope, name, overlay, version, updated_at, updated_by FROM config_overlays"
                " WHERE scope = $1 AND name = $2",
                scope,
                name,
            )
            return None if row is None else Overlay(*row)

    async def pole_overlays(self, pole_id: str) -> list[Overlay]:
        with _available():
            return (await self._layers_of(self._pool, [pole_id]))[pole_id]

    async def fleet_summary(self, online_since: float) -> FleetSummary:
        with _available():
            row = await self._pool.fetchrow(
                "SELECT"
                " count(*) FILTER (WHERE revoked_at IS NULL AND last_seen >= $1),"
                " count(*) FILTER (WHERE revoked_at IS NULL AND coalesce(last_seen < $1, true)),"
                " count(*) FILTER (WHERE revoked_at IS NOT NULL),"
                " coalesce(max(backlog) FILTER (WHERE revoked_at IS NULL), 0),"
                " coalesce(max(oldest_age_s) FILTER (WHERE revoked_at IS NULL), 0),"
                " coalesce(max(abs(clock_skew_s)) FILTER (WHERE revoked_at IS NULL), 0),"
                " count(*) FILTER (WHERE revoked_at IS NULL AND config_applied IS DISTINCT FROM config_target"
                "  AND config_applied IS NOT NULL),"
                " count(*) FILTER (WHERE revoked_at IS NULL AND config_error IS NOT NULL)"
                " FROM poles",
                online_since,
            )
            assert row is not None
            return FleetSummary(
                int(row[0]), int(row[1]), int(row[2]), int(row[3]), float(row[4]), float(row[5]), row[6], row[7]
            )

    def pool_stats(self) -> PoolStats:
        pool = self._pool
        size = pool.get_size()
        return PoolStats(size=size, max_size=pool.get_max_size(), in_use=size - pool.get_idle_size())
