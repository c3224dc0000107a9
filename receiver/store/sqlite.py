"""SQLite backend (aiosqlite, WAL): the pilot's embedded default, one receiver process."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
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
from sync.files import private_file
from sync.protocol import Rejection, WireEvent

# A value of one event that SQLite (or its Python binding) refuses: an integer beyond 64 bits, text
# that is not UTF-8, a constraint. Anything else is the database being unavailable.
_DATA_ERRORS = (OverflowError, UnicodeEncodeError, sqlite3.DataError, sqlite3.IntegrityError)

_CHUNK = 500

MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE tokens (
            token_hash TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('pole', 'reader')),
            pole_id TEXT,
            name TEXT,
            created_at REAL NOT NULL,
            revoked_at REAL
        )""",
        "CREATE INDEX tokens_by_pole ON tokens (pole_id)",
        """CREATE TABLE poles (
            pole_id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            last_seen REAL,
            last_batch_id TEXT,
            max_seq INTEGER NOT NULL DEFAULT 0,
            events_total INTEGER NOT NULL DEFAULT 0,
            status TEXT
        )""",
        """CREATE TABLE events (
            n INTEGER PRIMARY KEY,
            pole_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            ts REAL NOT NULL,
            type TEXT NOT NULL,
            priority TEXT NOT NULL,
            lat REAL,
            lon REAL,
            location_source TEXT,
            data TEXT NOT NULL,
            media TEXT NOT NULL,
            received_at REAL NOT NULL,
            batch_id TEXT NOT NULL,
            UNIQUE (pole_id, event_id)
        )""",
        "CREATE INDEX events_by_pole_ts ON events (pole_id, ts)",
        """CREATE TABLE media (
            sha256 TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            pole_id TEXT NOT NULL,
            stored_at REAL NOT NULL
        )""",
    ],
    2: [
        "ALTER TABLE tokens ADD COLUMN token_id TEXT",
        "UPDATE tokens SET token_id = substr(token_hash, 1, 12)",
        "CREATE UNIQUE INDEX tokens_by_id ON tokens (token_id)",
        "ALTER TABLE tokens ADD COLUMN last_used_at REAL",
    ],
}

_TOKEN_COLUMNS = "token_id, role, pole_id, name, created_at, last_used_at, revoked_at"

_INSERT = (
    "INSERT INTO events (event_id, seq, ts, type, priority, lat, lon, location_source,"
    " data, media, pole_id, received_at, batch_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


async def _insert_in_savepoint(db: aiosqlite.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert event rows so that a failure undoes them alone, not the transaction around them."""
    await db.execute("SAVEPOINT one")
    try:
        await db.executemany(_INSERT, rows)
    except BaseException:
        await db.execute("ROLLBACK TO one")
        await db.execute("RELEASE one")
        raise
    await db.execute("RELEASE one")


@contextlib.contextmanager
def _available() -> Iterator[None]:
    """Any database error inside becomes a :class:`StoreError`: the caller answers 503, logs no traceback."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(str(exc)) from exc


class SqliteStore:
    """One writer connection (serialised by a lock) and one reader connection."""

    backend = "sqlite"

    def __init__(self, db: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._db = db
        self._reader = reader
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> SqliteStore:
        private_file(Path(path))  # 0600 in a 0700 directory whatever the umask (SQLite's side files follow)
        db = await aiosqlite.connect(path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA busy_timeout=5000")
        await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        reader = await aiosqlite.connect(path, isolation_level=None)
        await reader.execute("PRAGMA busy_timeout=5000")
        store = cls(db, reader)
        await store._migrate()
        return store

    async def _migrate(self) -> None:
        async with self._transaction() as db:
            row = await (await db.execute("SELECT max(version) FROM schema_version")).fetchone()
            current = (row[0] if row else None) or 0
            for version in sorted(v for v in MIGRATIONS if v > current):
                for statement in MIGRATIONS[version]:
                    await db.execute(statement)
                await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        await self._reader.close()
        await self._db.close()

    async def ping(self) -> None:
        try:
            await self._reader.execute("SELECT 1")
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    async def lookup_token(self, token_hash: str) -> TokenInfo | None:
        with _available():
            row = await (
                await self._reader.execute(
                    "SELECT role, pole_id, name, revoked_at, token_id FROM tokens WHERE token_hash = ?", (token_hash,)
                )
            ).fetchone()
            return None if row is None else TokenInfo(row[0], row[1], row[2], row[3] is not None, row[4])

    async def pole_keys(self, pole_id: str) -> list[str]:
        rows = await self._reader.execute_fetchall(
            "SELECT token_hash FROM tokens WHERE pole_id = ? AND role = 'pole' AND revoked_at IS NULL", (pole_id,)
        )
        return [str(r[0]) for r in rows]

    async def add_token(self, token_hash: str, role: str, pole_id: str | None, name: str | None) -> None:
        with _available():
            now = time.time()
            async with self._transaction() as db:
                if pole_id is not None:
                    await db.execute("INSERT OR IGNORE INTO poles (pole_id, created_at) VALUES (?, ?)", (pole_id, now))
                await db.execute(
                    "INSERT INTO tokens (token_hash, token_id, role, pole_id, name, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (token_hash, token_id_of(token_hash), role, pole_id, name, now),
                )

    async def revoke_pole(self, pole_id: str) -> int:
        with _available():
            async with self._transaction() as db:
                cur = await db.execute(
                    "UPDATE tokens SET revoked_at = ? WHERE pole_id = ? AND revoked_at IS NULL", (time.time(), pole_id)
                )
                return cur.rowcount

    async def list_tokens(self) -> list[TokenRecord]:
        with _available():
            rows = await self._reader.execute_fetchall(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY created_at, token_id"
            )
            return [TokenRecord(*r) for r in rows]

    async def tokens_with_prefix(self, prefix: str) -> list[TokenRecord]:
        with _available():
            rows = await self._reader.execute_fetchall(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE substr(token_id, 1, ?) = ? ORDER BY token_id",
                (len(prefix), prefix),
            )
            return [TokenRecord(*r) for r in rows]

    async def revoke_token(self, token_id: str) -> bool:
        with _available():
            async with self._transaction() as db:
                cur = await db.execute(
                    "UPDATE tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
                    (time.time(), token_id),
                )
                return cur.rowcount == 1

    async def touch_token(self, token_id: str, when: float) -> None:
        with _available():
            async with self._transaction() as db:
                await db.execute(
                    "UPDATE tokens SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE token_id = ?",
                    (when, token_id),
                )

    async def insert_batch(
        self, pole_id: str, batch_id: str, events: list[WireEvent], status: dict[str, Any] | None, now: float
    ) -> InsertResult:
        rejected: list[Rejection] = []
        try:
            async with self._transaction() as db:
                existing: set[str] = set()
                for i in range(0, len(events), _CHUNK):
                    chunk = [e.id for e in events[i : i + _CHUNK]]
                    marks = ",".join("?" * len(chunk))
                    rows = await db.execute_fetchall(
                        f"SELECT event_id FROM events WHERE pole_id = ? AND event_id IN ({marks})", (pole_id, *chunk)
                    )
                    existing.update(r[0] for r in rows)
                fresh = [e for e in events if e.id not in existing]
                params = [
                    (
                        *event_row(e),
                        orjson.dumps(e.data).decode(),
                        orjson.dumps(e.media).decode(),
                        pole_id,
                        now,
                        batch_id,
                    )
                    for e in fresh
                ]
                try:
                    await _insert_in_savepoint(db, params)
                except _DATA_ERRORS:
                    for event, row in zip(fresh, params, strict=True):
                        try:
                            await _insert_in_savepoint(db, [row])
                        except _DATA_ERRORS as exc:
                            rejected.append(Rejection(id=event.id, reason=refused_by_database(exc)))
                refused = {r.id for r in rejected}
                fresh = [e for e in fresh if e.id not in refused]
                kept = [e for e in events if e.id not in refused]
                await db.execute(
                    "UPDATE poles SET last_seen = ?, last_batch_id = ?, max_seq = max(max_seq, ?),"
                    " events_total = events_total + ?, status = coalesce(?, status) WHERE pole_id = ?",
                    (
                        now,
                        batch_id,
                        max((e.seq for e in kept), default=0),
                        len(fresh),
                        orjson.dumps(status).decode() if status is not None else None,
                        pole_id,
                    ),
                )
                shas = sorted({sha for e in kept for sha in e.media})
                have: set[str] = set()
                if shas:
                    marks = ",".join("?" * len(shas))
                    rows = await db.execute_fetchall(f"SELECT sha256 FROM media WHERE sha256 IN ({marks})", shas)
                    have = {r[0] for r in rows}
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc
        return InsertResult(
            accepted=[e.id for e in fresh],
            duplicates=[e.id for e in kept if e.id in existing],
            missing_media=[s for s in shas if s not in have],
            rejected=rejected,
        )

    async def add_media(self, sha256: str, size: int, pole_id: str, now: float) -> bool:
        with _available():
            async with self._transaction() as db:
                cur = await db.execute(
                    "INSERT OR IGNORE INTO media (sha256, size, pole_id, stored_at) VALUES (?, ?, ?, ?)",
                    (sha256, size, pole_id, now),
                )
                return cur.rowcount == 1

    async def has_media(self, sha256: str) -> bool:
        with _available():
            row = await (await self._reader.execute("SELECT 1 FROM media WHERE sha256 = ?", (sha256,))).fetchone()
            return row is not None

    async def query_events(self, query: EventQuery) -> EventPage:
        with _available():
            conditions = query.conditions()
            where = [sql.format("?") for sql, _ in conditions]
            params: list[Any] = [value for _, value in conditions]
            rows = list(
                await self._reader.execute_fetchall(
                    "SELECT n, pole_id, event_id, seq, ts, type, priority, lat, lon, location_source, data, media,"
                    f" received_at FROM events WHERE {' AND '.join(where)} ORDER BY n LIMIT ?",
                    (*params, query.limit + 1),
                )
            )
            more = len(rows) > query.limit
            rows = rows[: query.limit]
            events = [
                public_event(
                    pole, event_id, seq, ts, type_, prio, lat, lon, src, orjson.loads(data), orjson.loads(media), at
                )
                for _, pole, event_id, seq, ts, type_, prio, lat, lon, src, data, media, at in rows
            ]
            return EventPage(events, rows[-1][0] if more else None)

    async def poles(self) -> list[PoleState]:
        with _available():
            rows = await self._reader.execute_fetchall(
                "SELECT pole_id, last_seen, max_seq, events_total, status FROM poles ORDER BY pole_id"
            )
            return [PoleState(r[0], r[1], r[2], r[3], orjson.loads(r[4]) if r[4] else None) for r in rows]

    async def count_online(self, since: float) -> int:
        with _available():
            row = await (
                await self._reader.execute("SELECT count(*) FROM poles WHERE last_seen >= ?", (since,))
            ).fetchone()
            return int(row[0]) if row else 0
