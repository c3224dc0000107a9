"""PostgreSQL backend (asyncpg pool): the city's store, shared by any number of receiver replicas.

A batch is one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING
RETURNING``: PostgreSQL itself tells which events were new, so concurrent
replicas receiving the same replay cannot both count it as accepted.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import orjson

from receiver.store.base import (
    EventPage,
    EventQuery,
    InsertResult,
    PoleState,
    StoreError,
    TokenInfo,
    TokenRecord,
    event_row,
    public_event,
    refused_by_database,
    token_id_of,
)
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
}

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


def _walk_large_floats(value: Any) -> Any:
    if isinstance(value, float) and abs(value) >= 1e16:
        return orjson.Fragment(format(value, ".1f"))
    if isinstance(value, dict):
        return {k: _walk_large_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk_large_floats(v) for v in value]
    return value


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


class PostgresStore:
    backend = "postgresql"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str, pool_size: int = 8) -> PostgresStore:
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_size, init=_init_connection)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        store = cls(pool)
        await store._migrate()
        return store

    async def _migrate(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            for version in sorted(v for v in MIGRATIONS if v > current):
                for statement in MIGRATIONS[version]:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

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
            result = await self._pool.execute(
                "UPDATE tokens SET revoked_at = $1 WHERE pole_id = $2 AND revoked_at IS NULL", time.time(), pole_id
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
        rows = [(*event_row(e), jsonb_text(e.data), orjson.dumps(e.media).decode()) for e in events]
        rejected: list[Rejection] = []
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                try:
                    async with conn.transaction():  # a savepoint: the common case is this one statement
                        inserted = await self._insert(conn, pole_id, batch_id, now, rows)
                except _DATA_ERRORS:
                    inserted = set()
                    for event, row in zip(events, rows, strict=True):
                        try:
                            async with conn.transaction():
                                inserted |= await self._insert(conn, pole_id, batch_id, now, [row])
                        except _DATA_ERRORS as exc:
                            rejected.append(Rejection(id=event.id, reason=refused_by_database(exc)))
                refused = {r.id for r in rejected}
                kept = [e for e in events if e.id not in refused]
                await conn.execute(
                    "UPDATE poles SET last_seen = $2, last_batch_id = $3, max_seq = greatest(max_seq, $4),"
                    " events_total = events_total + $5, status = coalesce($6::jsonb, status) WHERE pole_id = $1",
                    pole_id,
                    now,
                    batch_id,
                    max((e.seq for e in kept), default=0),
                    len(inserted),
                    status,
                )
                shas = sorted({sha for e in kept for sha in e.media})
                have = (
                    {r[0] for r in await conn.fetch("SELECT sha256 FROM media WHERE sha256 = any($1::text[])", shas)}
                    if shas
                    else set()
                )
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        return InsertResult(
            accepted=[e.id for e in kept if e.id in inserted],
            duplicates=[e.id for e in kept if e.id not in inserted],
            missing_media=[s for s in shas if s not in have],
            rejected=rejected,
        )

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
        with _available():
            rows = await self._pool.fetch(
                "SELECT pole_id, last_seen, max_seq, events_total, status FROM poles ORDER BY pole_id"
            )
            return [PoleState(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def count_online(self, since: float) -> int:
        with _available():
            return int(await self._pool.fetchval("SELECT count(*) FROM poles WHERE last_seen >= $1", since))
