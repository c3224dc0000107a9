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
from sync.files import private_file
from sync.overlays import overlay_version
from sync.protocol import Rejection, WireEvent
from sync.sqlitetx import rollback

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
    4: [
        # Admin tokens: SQLite cannot change a CHECK constraint, so the table is rebuilt.
        """CREATE TABLE tokens_v4 (
            token_hash TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('pole', 'reader', 'admin')),
            pole_id TEXT,
            name TEXT,
            created_at REAL NOT NULL,
            revoked_at REAL,
            token_id TEXT,
            last_used_at REAL
        )""",
        "INSERT INTO tokens_v4 (token_hash, role, pole_id, name, created_at, revoked_at, token_id, last_used_at)"
        " SELECT token_hash, role, pole_id, name, created_at, revoked_at, token_id, last_used_at FROM tokens",
        "DROP TABLE tokens",
        "ALTER TABLE tokens_v4 RENAME TO tokens",
        "CREATE INDEX tokens_by_pole ON tokens (pole_id)",
        "CREATE UNIQUE INDEX tokens_by_id ON tokens (token_id)",
        "ALTER TABLE poles ADD COLUMN name TEXT",
        "ALTER TABLE poles ADD COLUMN lat REAL",
        "ALTER TABLE poles ADD COLUMN lon REAL",
        "ALTER TABLE poles ADD COLUMN first_seen REAL",
        "ALTER TABLE poles ADD COLUMN revoked_at REAL",
        "ALTER TABLE poles ADD COLUMN config_target TEXT NOT NULL DEFAULT '0'",
        "ALTER TABLE poles ADD COLUMN config_applied TEXT",
        "ALTER TABLE poles ADD COLUMN config_error TEXT",
        "ALTER TABLE poles ADD COLUMN backlog INTEGER",
        "ALTER TABLE poles ADD COLUMN oldest_age_s REAL",
        "ALTER TABLE poles ADD COLUMN clock_skew_s REAL",
        "UPDATE poles SET first_seen = last_seen",  # the best known: first contact is not older than that
        # Poles whose every token was revoked before this version are revoked poles.
        "UPDATE poles SET revoked_at = (SELECT max(t.revoked_at) FROM tokens t WHERE t.pole_id = poles.pole_id)"
        " WHERE EXISTS (SELECT 1 FROM tokens t WHERE t.pole_id = poles.pole_id)"
        " AND NOT EXISTS (SELECT 1 FROM tokens t WHERE t.pole_id = poles.pole_id AND t.revoked_at IS NULL)",
        # The same table as analytics' migration 3 (either may come first).
        "CREATE TABLE IF NOT EXISTS pole_tags (pole_id TEXT NOT NULL, tag TEXT NOT NULL,"
        " PRIMARY KEY (tag, pole_id)) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS pole_tags_by_pole ON pole_tags (pole_id)",
        """CREATE TABLE config_overlays (
            scope TEXT NOT NULL CHECK (scope IN ('pole', 'tag')),
            name TEXT NOT NULL,
            overlay TEXT NOT NULL,
            version TEXT NOT NULL,
            updated_at REAL NOT NULL,
            updated_by TEXT,
            PRIMARY KEY (scope, name)
        )""",
    ],
}

_TOKEN_COLUMNS = "token_id, role, pole_id, name, created_at, last_used_at, revoked_at"

# The pole's row, with a batch: last (and first) contact, and its status block when it has one.
_TOUCH_POLE = (
    "UPDATE poles SET last_seen = ?, first_seen = coalesce(first_seen, ?), last_batch_id = ?,"
    " max_seq = max(max_seq, ?), events_total = events_total + ? WHERE pole_id = ? RETURNING config_target"
)
_TOUCH_POLE_WITH_STATUS = (
    "UPDATE poles SET last_seen = ?, first_seen = coalesce(first_seen, ?), last_batch_id = ?,"
    " max_seq = max(max_seq, ?), events_total = events_total + ?, status = ?, config_applied = ?,"
    " config_error = ?, backlog = ?, oldest_age_s = ?, clock_skew_s = ? WHERE pole_id = ? RETURNING config_target"
)

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
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException:
                await rollback(self._db)
                raise

    async def close(self) -> None:
        await self._reader.close()
        await self._db.close()

    async def ping(self) -> None:
        try:
            await self._reader.execute("SELECT 1")
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    async def schema_behind(self) -> str | None:
        with _available():
            row = await (await self._reader.execute("SELECT coalesce(max(version), 0) FROM schema_version")).fetchone()
        return schema_problem(int(row[0]) if row else 0, max(MIGRATIONS))

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
                    await db.execute("UPDATE poles SET revoked_at = NULL WHERE pole_id = ?", (pole_id,))
                await db.execute(
                    "INSERT INTO tokens (token_hash, token_id, role, pole_id, name, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (token_hash, token_id_of(token_hash), role, pole_id, name, now),
                )

    async def revoke_pole(self, pole_id: str) -> int:
        with _available():
            now = time.time()
            async with self._transaction() as db:
                cur = await db.execute(
                    "UPDATE tokens SET revoked_at = ? WHERE pole_id = ? AND revoked_at IS NULL", (now, pole_id)
                )
                await db.execute(
                    "UPDATE poles SET revoked_at = coalesce(revoked_at, ?) WHERE pole_id = ?", (now, pole_id)
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
                touched = (now, now, batch_id, max((e.seq for e in kept), default=0), len(fresh))
                if status is None:
                    cur = await db.execute(_TOUCH_POLE, (*touched, pole_id))
                else:
                    figures = StatusFigures.of(status)
                    cur = await db.execute(
                        _TOUCH_POLE_WITH_STATUS,
                        (
                            *touched,
                            orjson.dumps(status).decode(),
                            figures.config_applied,
                            figures.config_error,
                            figures.backlog,
                            figures.oldest_age_s,
                            figures.clock_skew_s,
                            pole_id,
                        ),
                    )
                target = await cur.fetchone()
                await cur.close()
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
            config_target=target[0] if target else None,
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
            row = await (
                await self._reader.execute("SELECT count(*) FROM poles WHERE last_seen >= ?", (since,))
            ).fetchone()
            return int(row[0]) if row else 0

    # ------------------------------------------------------------------ fleet registry

    async def _poles_where(self, db: aiosqlite.Connection, where: str, params: list[Any]) -> list[PoleState]:
        rows = list(await db.execute_fetchall(f"SELECT {POLE_COLUMNS} FROM poles WHERE {where}", params))
        if not rows:
            return []
        ids = [r[0] for r in rows]
        tags: dict[str, list[str]] = {}
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for pole, tag in await db.execute_fetchall(
                f"SELECT pole_id, tag FROM pole_tags WHERE pole_id IN ({marks}) ORDER BY tag", chunk
            ):
                tags.setdefault(pole, []).append(tag)
        return [pole_state(r, orjson.loads(r[4]) if r[4] else None, tags.get(r[0], [])) for r in rows]

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
            async with self._transaction() as db:
                cur = await db.execute(
                    "INSERT OR IGNORE INTO poles (pole_id, created_at, name, lat, lon) VALUES (?, ?, ?, ?, ?)",
                    (pole_id, now, name, lat, lon),
                )
                if cur.rowcount != 1:
                    return False
                await db.execute(
                    "INSERT INTO tokens (token_hash, token_id, role, pole_id, name, created_at)"
                    " VALUES (?, ?, 'pole', ?, NULL, ?)",
                    (token_hash, token_id_of(token_hash), pole_id, now),
                )
                if tags:
                    await self._set_tags(db, pole_id, tags)
                return True

    async def get_pole(self, pole_id: str) -> PoleState | None:
        with _available():
            found = await self._poles_where(self._reader, "pole_id = ?", [pole_id])
            return found[0] if found else None

    async def list_poles(self, query: PoleQuery) -> PolePage:
        with _available():
            conditions = query.conditions()
            where = " AND ".join(sql.format("?") for sql, _ in conditions) or "1"
            params = [value for sql, value in conditions if "{}" in sql]
            poles = await self._poles_where(
                self._reader, f"{where} ORDER BY pole_id LIMIT ?", [*params, query.limit + 1]
            )
            more = len(poles) > query.limit
            poles = poles[: query.limit]
            return PolePage(poles, poles[-1].pole_id if more else None)

    async def update_pole(self, pole_id: str, changes: PoleChanges) -> PoleState | None:
        with _available():
            async with self._transaction() as db:
                row = await (await db.execute("SELECT 1 FROM poles WHERE pole_id = ?", (pole_id,))).fetchone()
                if row is None:
                    return None
                fields = {k: v for k, v in changes.fields.items() if k in ("name", "lat", "lon")}
                if fields:
                    assignments = ", ".join(f"{k} = ?" for k in fields)
                    await db.execute(f"UPDATE poles SET {assignments} WHERE pole_id = ?", (*fields.values(), pole_id))
                if changes.tags is not None:
                    await self._set_tags(db, pole_id, changes.tags)
            return await self.get_pole(pole_id)

    async def set_pole_tags(self, pole_id: str, tags: list[str]) -> None:
        with _available():
            async with self._transaction() as db:
                await self._set_tags(db, pole_id, tags)

    async def _set_tags(self, db: aiosqlite.Connection, pole_id: str, tags: list[str]) -> None:
        await db.execute("DELETE FROM pole_tags WHERE pole_id = ?", (pole_id,))
        await db.executemany(
            "INSERT INTO pole_tags (pole_id, tag) VALUES (?, ?)", [(pole_id, t) for t in sorted(set(tags))]
        )
        await self._retarget(db, [pole_id])

    async def _layers_of(self, db: aiosqlite.Connection, pole_ids: list[str]) -> dict[str, list[Overlay]]:
        """The layers of each pole's effective overlay, in merge order: two queries per 500 poles."""
        out: dict[str, list[Overlay]] = {}
        for i in range(0, len(pole_ids), _CHUNK):
            chunk = pole_ids[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            tags = await db.execute_fetchall(f"SELECT pole_id, tag FROM pole_tags WHERE pole_id IN ({marks})", chunk)
            rows = await db.execute_fetchall(
                "SELECT scope, name, overlay, version, updated_at, updated_by FROM config_overlays"
                f" WHERE (scope = 'pole' AND name IN ({marks}))"
                f" OR (scope = 'tag' AND name IN (SELECT tag FROM pole_tags WHERE pole_id IN ({marks})))",
                [*chunk, *chunk],
            )
            overlays = [Overlay(r[0], r[1], orjson.loads(r[2]), r[3], r[4], r[5]) for r in rows]
            out |= layers_by_pole(chunk, [(r[0], r[1]) for r in tags], overlays)
        return out

    async def _retarget(self, db: aiosqlite.Connection, pole_ids: list[str]) -> dict[str, str]:
        """Recompute the target version of ``pole_ids`` from their layers, in the caller's transaction."""
        targets = target_versions(await self._layers_of(db, pole_ids))
        await db.executemany(
            "UPDATE poles SET config_target = ? WHERE pole_id = ?", [(v, p) for p, v in targets.items()]
        )
        return targets

    async def set_overlay(
        self, scope: Scope, name: str, overlay: dict[str, Any] | None, now: float, by: str | None
    ) -> dict[str, str]:
        with _available():
            async with self._transaction() as db:
                if overlay is None:
                    await db.execute("DELETE FROM config_overlays WHERE scope = ? AND name = ?", (scope, name))
                else:
                    await db.execute(
                        "INSERT INTO config_overlays (scope, name, overlay, version, updated_at, updated_by)"
                        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (scope, name) DO UPDATE SET"
                        " overlay = excluded.overlay, version = excluded.version, updated_at = excluded.updated_at,"
                        " updated_by = excluded.updated_by",
                        (scope, name, orjson.dumps(overlay).decode(), overlay_version(overlay), now, by),
                    )
                if scope == "pole":
                    reached = [name]
                else:
                    rows = await db.execute_fetchall("SELECT pole_id FROM pole_tags WHERE tag = ?", (name,))
                    reached = [r[0] for r in rows]
                return await self._retarget(db, reached)

    async def get_overlay(self, scope: Scope, name: str) -> Overlay | None:
        with _available():
            row = await (
                await self._reader.execute(
                    "SELECT scope, name, overlay, version, updated_at, updated_by FROM config_overlays"
                    " WHERE scope = ? AND name = ?",
                    (scope, name),
                )
            ).fetchone()
            return None if row is None else Overlay(row[0], row[1], orjson.loads(row[2]), row[3], row[4], row[5])

    async def pole_overlays(self, pole_id: str) -> list[Overlay]:
        with _available():
            return (await self._layers_of(self._reader, [pole_id]))[pole_id]

    async def fleet_summary(self, online_since: float) -> FleetSummary:
        with _available():
            row = await (
                await self._reader.execute(
                    "SELECT"
                    " coalesce(sum(CASE WHEN revoked_at IS NULL AND last_seen >= ? THEN 1 ELSE 0 END), 0),"
                    " coalesce(sum(CASE WHEN revoked_at IS NULL AND coalesce(last_seen < ?, 1) THEN 1 ELSE 0 END), 0),"
                    " coalesce(sum(CASE WHEN revoked_at IS NOT NULL THEN 1 ELSE 0 END), 0),"
                    " coalesce(max(CASE WHEN revoked_at IS NULL THEN backlog END), 0),"
                    " coalesce(max(CASE WHEN revoked_at IS NULL THEN oldest_age_s END), 0),"
                    " coalesce(max(CASE WHEN revoked_at IS NULL THEN abs(clock_skew_s) END), 0),"
                    " coalesce(sum(CASE WHEN revoked_at IS NULL AND config_applied IS NOT NULL"
                    "  AND config_applied != config_target THEN 1 ELSE 0 END), 0),"
                    " coalesce(sum(CASE WHEN revoked_at IS NULL AND config_error IS NOT NULL THEN 1 ELSE 0 END), 0)"
                    " FROM poles",
                    (online_since, online_since),
                )
            ).fetchone()
            assert row is not None
            return FleetSummary(
                int(row[0]), int(row[1]), int(row[2]), int(row[3]), float(row[4]), float(row[5]), row[6], row[7]
            )

    def pool_stats(self) -> PoolStats:
        # One writer connection (serialised by a lock) and one reader.
        return PoolStats(size=2, max_size=2, in_use=1 if self._lock.locked() else 0)
