"""SQLite backend (aiosqlite, WAL): the pilot's embedded default, one receiver process."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from receiver.store.analytics import (
    AirRow,
    CountsQuery,
    Params,
    SpeedRow,
    TrafficRow,
    Window,
    air_rows,
    air_sql,
    counts_sql,
    hours_by_type_sql,
    speed_rows,
    speed_sql,
    traffic_rows,
    traffic_sql,
)
from receiver.store.base import (
    POLE_COLUMNS,
    POSITION_COLUMNS,
    ConfigChange,
    EventPage,
    EventQuery,
    FleetSummary,
    InsertResult,
    MaintenanceReport,
    Overlay,
    PartitionLayout,
    PoleChanges,
    PolePage,
    PolePosition,
    PoleQuery,
    PoleState,
    PoolStats,
    RetentionRules,
    Scope,
    Session,
    StatusFigures,
    StoreError,
    TokenInfo,
    TokenRecord,
    User,
    event_row,
    layers_by_pole,
    pole_state,
    public_event,
    refused_by_database,
    schema_problem,
    target_versions,
    token_id_of,
)
from receiver.store.rollups import Rollups, rollups_of
from sync.files import private_file
from sync.overlays import overlay_version
from sync.protocol import Rejection, WireEvent
from sync.sqlitetx import rollback

# A value of one event that SQLite (or its Python binding) refuses: an integer beyond 64 bits, text
# that is not UTF-8, a constraint. Anything else is the database being unavailable.
_DATA_ERRORS = (OverflowError, UnicodeEncodeError, sqlite3.DataError, sqlite3.IntegrityError)

_CHUNK = 500
_RETENTION_CHUNK = 5000

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
    5: [
        """CREATE TABLE rollup_pole_hourly (
            pole_id TEXT NOT NULL, hour INTEGER NOT NULL, type TEXT NOT NULL, n INTEGER NOT NULL,
            PRIMARY KEY (pole_id, hour, type)
        ) WITHOUT ROWID""",
        """CREATE TABLE rollup_pole_daily (
            pole_id TEXT NOT NULL, day INTEGER NOT NULL, type TEXT NOT NULL, n INTEGER NOT NULL,
            PRIMARY KEY (pole_id, day, type)
        ) WITHOUT ROWID""",
        """CREATE TABLE rollup_pole_hourly_total (
            pole_id TEXT NOT NULL, hour INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (pole_id, hour)
        ) WITHOUT ROWID""",
        """CREATE TABLE rollup_pole_daily_total (
            pole_id TEXT NOT NULL, day INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (pole_id, day)
        ) WITHOUT ROWID""",
        """CREATE TABLE rollup_fleet_hourly (
            hour INTEGER NOT NULL, type TEXT NOT NULL, shard INTEGER NOT NULL, n INTEGER NOT NULL,
            PRIMARY KEY (hour, type, shard)
        ) WITHOUT ROWID""",
        """CREATE TABLE rollup_fleet_daily (
            day INTEGER NOT NULL, type TEXT NOT NULL, shard INTEGER NOT NULL, n INTEGER NOT NULL,
            PRIMARY KEY (day, type, shard)
        ) WITHOUT ROWID""",
        """CREATE TABLE rollup_traffic (
            pole_id TEXT NOT NULL, hour INTEGER NOT NULL, line TEXT NOT NULL, direction TEXT NOT NULL,
            class TEXT NOT NULL, n INTEGER NOT NULL,
            PRIMARY KEY (pole_id, hour, line, direction, class)
        ) WITHOUT ROWID""",
        """CREATE TABLE rollup_air (
            pole_id TEXT NOT NULL, hour INTEGER NOT NULL, pm25_sum REAL NOT NULL, pm25_max REAL NOT NULL,
            pm10_sum REAL NOT NULL, pm10_max REAL NOT NULL, samples INTEGER NOT NULL,
            PRIMARY KEY (pole_id, hour)
        ) WITHOUT ROWID""",
        """CREATE TABLE rollup_speed (
            pole_id TEXT NOT NULL, hour INTEGER NOT NULL, bucket INTEGER NOT NULL, n INTEGER NOT NULL,
            over_limit INTEGER NOT NULL, PRIMARY KEY (pole_id, hour, bucket)
        ) WITHOUT ROWID""",
        # The events stored before this version, by the rules of receiver/store/rollups.py (``+ 0.0``
        # keeps the arithmetic in floating point, as there, whatever the JSON number looked like).
        "INSERT INTO rollup_pole_hourly (pole_id, hour, type, n)"
        " SELECT pole_id, CAST(ts / 3600 AS INTEGER) * 3600, type, count(*) FROM events GROUP BY 1, 2, 3",
        "INSERT INTO rollup_pole_daily (pole_id, day, type, n)"
        " SELECT pole_id, hour - hour % 86400, type, sum(n) FROM rollup_pole_hourly GROUP BY 1, 2, 3",
        "INSERT INTO rollup_pole_hourly_total (pole_id, hour, n)"
        " SELECT pole_id, hour, sum(n) FROM rollup_pole_hourly GROUP BY 1, 2",
        "INSERT INTO rollup_pole_daily_total (pole_id, day, n)"
        " SELECT pole_id, day, sum(n) FROM rollup_pole_daily GROUP BY 1, 2",
        # All in shard 0: shards only spread the row locks of concurrent batches; queries sum them.
        "INSERT INTO rollup_fleet_hourly (hour, type, shard, n)"
        " SELECT hour, type, 0, sum(n) FROM rollup_pole_hourly GROUP BY 1, 2",
        "INSERT INTO rollup_fleet_daily (day, type, shard, n)"
        " SELECT day, type, 0, sum(n) FROM rollup_pole_daily GROUP BY 1, 2",
        """INSERT INTO rollup_traffic (pole_id, hour, line, direction, class, n)
        SELECT e.pole_id,
            CAST(CASE WHEN json_type(e.data, '$.period_start') IN ('integer', 'real')
                    AND json_extract(e.data, '$.period_start') BETWEEN 0 AND 253402300799
                THEN json_extract(e.data, '$.period_start') + 0.0 ELSE e.ts END / 3600 AS INTEGER) * 3600,
            json_extract(e.data, '$.line'), d.key, c.key, sum(c.value)
        FROM events e, json_each(e.data, '$.counts') d,
            json_each(CASE WHEN d.type = 'object' THEN d.value ELSE '{}' END) c
        WHERE e.type = 'count' AND json_type(e.data, '$.line') = 'text' AND json_type(e.data, '$.counts') = 'object'
            AND c.type = 'integer' AND c.value BETWEEN 0 AND 1000000
        GROUP BY 1, 2, 3, 4, 5""",
        """INSERT INTO rollup_air (pole_id, hour, pm25_sum, pm25_max, pm10_sum, pm10_max, samples)
        SELECT pole_id, CAST(ts / 3600 AS INTEGER) * 3600, sum(pm25 * w), max(pm25), sum(pm10 * w), max(pm10), sum(w)
        FROM (
            SELECT pole_id, ts,
                CASE WHEN json_type(data, '$.pm2_5') IN ('integer', 'real')
                    THEN json_extract(data, '$.pm2_5') + 0.0 END AS pm25,
                CASE WHEN json_type(data, '$.pm10') IN ('integer', 'real')
                    THEN json_extract(data, '$.pm10') + 0.0 END AS pm10,
                CASE WHEN json_type(data, '$.samples') = 'integer'
                    AND json_extract(data, '$.samples') BETWEEN 1 AND 1000000
                    THEN json_extract(data, '$.samples') ELSE 1 END AS w
            FROM events WHERE type = 'air_quality'
        ) WHERE pm25 >= 0 AND pm25 < 1e9 AND pm10 >= 0 AND pm10 < 1e9 GROUP BY 1, 2""",
        """INSERT INTO rollup_speed (pole_id, hour, bucket, n, over_limit)
        SELECT pole_id, CAST(ts / 3600 AS INTEGER) * 3600, CAST(kmh * 10 + 0.5 AS INTEGER), count(*), sum(over)
        FROM (
            SELECT pole_id, ts,
                CASE WHEN json_type(data, '$.speed_kmh') IN ('integer', 'real')
                    THEN json_extract(data, '$.speed_kmh') + 0.0 END AS kmh,
                coalesce(json_type(data, '$.over_limit') = 'true', 0) AS over
            FROM events WHERE type = 'speed'
        ) WHERE kmh >= 0 AND kmh < 1000 GROUP BY 1, 2, 3""",
        # For the questions about every pole (by hour, in order); one pole's go by the primary keys.
        "CREATE INDEX rollup_pole_hourly_by_hour ON rollup_pole_hourly (hour, pole_id)",
        "CREATE INDEX rollup_pole_daily_by_day ON rollup_pole_daily (day, pole_id)",
        "CREATE INDEX rollup_pole_hourly_total_by_hour ON rollup_pole_hourly_total (hour, pole_id)",
        "CREATE INDEX rollup_pole_daily_total_by_day ON rollup_pole_daily_total (day, pole_id)",
        "CREATE INDEX rollup_traffic_by_hour ON rollup_traffic (hour, pole_id)",
        "CREATE INDEX rollup_air_by_hour ON rollup_air (hour, pole_id)",
        "CREATE INDEX rollup_speed_by_hour ON rollup_speed (hour, pole_id)",
    ],
    6: [
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('reader', 'admin')),
            password_hash TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE sessions (
            session_hash TEXT PRIMARY KEY,
            user_name TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL
        )""",
        "CREATE INDEX sessions_by_expiry ON sessions (expires_at)",
        "CREATE INDEX sessions_by_user ON sessions (user_name)",
        """CREATE TABLE config_history (
            n INTEGER PRIMARY KEY,
            scope TEXT NOT NULL,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            overlay TEXT,
            changed_at REAL NOT NULL,
            changed_by TEXT
        )""",
        "CREATE INDEX config_history_by_name ON config_history (scope, name, n)",
    ],
    # Retention deletes by type and ts, and reads the types stored, through this index.
    7: ["CREATE INDEX events_by_type_ts ON events (type, ts)"],
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


# The sums of a batch's new events (receiver/store/rollups.py), one row per bucket.
_ROLLUP_UPSERTS = {
    "pole_hourly": "INSERT INTO rollup_pole_hourly (pole_id, hour, type, n) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (pole_id, hour, type) DO UPDATE SET n = n + excluded.n",
    "pole_daily": "INSERT INTO rollup_pole_daily (pole_id, day, type, n) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (pole_id, day, type) DO UPDATE SET n = n + excluded.n",
    "pole_hourly_total": "INSERT INTO rollup_pole_hourly_total (pole_id, hour, n) VALUES (?, ?, ?)"
    " ON CONFLICT (pole_id, hour) DO UPDATE SET n = n + excluded.n",
    "pole_daily_total": "INSERT INTO rollup_pole_daily_total (pole_id, day, n) VALUES (?, ?, ?)"
    " ON CONFLICT (pole_id, day) DO UPDATE SET n = n + excluded.n",
    "traffic": "INSERT INTO rollup_traffic (pole_id, hour, line, direction, class, n) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (pole_id, hour, line, direction, class) DO UPDATE SET n = n + excluded.n",
    "air": "INSERT INTO rollup_air (pole_id, hour, pm25_sum, pm25_max, pm10_sum, pm10_max, samples)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pole_id, hour) DO UPDATE SET pm25_sum = pm25_sum + excluded.pm25_sum,"
    " pm25_max = max(pm25_max, excluded.pm25_max), pm10_sum = pm10_sum + excluded.pm10_sum,"
    " pm10_max = max(pm10_max, excluded.pm10_max), samples = samples + excluded.samples",
    "speed": "INSERT INTO rollup_speed (pole_id, hour, bucket, n, over_limit) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (pole_id, hour, bucket) DO UPDATE SET n = n + excluded.n,"
    " over_limit = over_limit + excluded.over_limit",
    "fleet_hourly": "INSERT INTO rollup_fleet_hourly (shard, hour, type, n) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (hour, type, shard) DO UPDATE SET n = n + excluded.n",
    "fleet_daily": "INSERT INTO rollup_fleet_daily (shard, day, type, n) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (day, type, shard) DO UPDATE SET n = n + excluded.n",
}


async def _add_rollups(db: aiosqlite.Connection, pole_id: str, rollups: Rollups) -> None:
    if not rollups:
        return
    for table, first, rows in rollups.by_table(pole_id):
        if rows:
            await db.executemany(_ROLLUP_UPSERTS[table], [(first, *row) for row in rows])


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
                # Fetched in the same call as the UPDATE runs: a cursor left open on a write (a task
                # cancelled between execute and fetch) would refuse every later SAVEPOINT on this connection.
                if status is None:
                    touched_rows = await db.execute_fetchall(_TOUCH_POLE, (*touched, pole_id))
                else:
                    figures = StatusFigures.of(status)
                    touched_rows = await db.execute_fetchall(
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
                target = next(iter(touched_rows), None)
                shas = sorted({sha for e in kept for sha in e.media})
                have: set[str] = set()
                if shas:
                    marks = ",".join("?" * len(shas))
                    rows = await db.execute_fetchall(f"SELECT sha256 FROM media WHERE sha256 IN ({marks})", shas)
                    have = {r[0] for r in rows}
                await _add_rollups(db, pole_id, rollups_of(fresh))
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

    async def recent_events(self, pole_id: str, limit: int) -> list[dict[str, Any]]:
        with _available():
            rows = await self._reader.execute_fetchall(
                "SELECT pole_id, event_id, seq, ts, type, priority, lat, lon, location_source, data, media,"
                " received_at FROM events WHERE pole_id = ? ORDER BY ts DESC LIMIT ?",
                (pole_id, limit),
            )
            return [
                public_event(
                    pole, event_id, seq, ts, type_, prio, lat, lon, src, orjson.loads(data), orjson.loads(m), at
                )
                for pole, event_id, seq, ts, type_, prio, lat, lon, src, data, m, at in rows
            ]

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

    async def pole_positions(self, query: PoleQuery) -> list[PolePosition]:
        with _available():
            conditions = query.conditions()
            where = " AND ".join(sql.format("?") for sql, _ in conditions) or "1"
            params = [value for sql, value in conditions if "{}" in sql]
            rows = await self._reader.execute_fetchall(
                f"SELECT {POSITION_COLUMNS} FROM poles WHERE {where} ORDER BY pole_id LIMIT ?", [*params, query.limit]
            )
            return [PolePosition(*r) for r in rows]

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
                await db.execute(
                    "INSERT INTO config_history (scope, name, version, overlay, changed_at, changed_by)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        scope,
                        name,
                        overlay_version(overlay or {}),
                        None if overlay is None else orjson.dumps(overlay).decode(),
                        now,
                        by,
                    ),
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

    async def config_history(self, scope: Scope, name: str, limit: int) -> list[ConfigChange]:
        with _available():
            rows = await self._reader.execute_fetchall(
                "SELECT scope, name, version, overlay, changed_at, changed_by FROM config_history"
                " WHERE scope = ? AND name = ? ORDER BY n DESC LIMIT ?",
                (scope, name, limit),
            )
            return [ConfigChange(r[0], r[1], r[2], orjson.loads(r[3]) if r[3] else None, r[4], r[5]) for r in rows]

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

    # ------------------------------------------------------------------ dashboard users and sessions

    async def put_user(self, name: str, role: str, password_hash: str, now: float) -> bool:
        with _available():
            async with self._transaction() as db:
                cur = await db.execute(
                    "INSERT INTO users (name, role, password_hash, created_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (name) DO NOTHING",
                    (name, role, password_hash, now),
                )
                if cur.rowcount == 1:
                    return True
                await db.execute(
                    "UPDATE users SET role = ?, password_hash = ? WHERE name = ?", (role, password_hash, name)
                )
                await db.execute("DELETE FROM sessions WHERE user_name = ?", (name,))
                return False

    async def get_user(self, name: str) -> User | None:
        with _available():
            row = await (
                await self._reader.execute(
                    "SELECT name, role, password_hash, created_at FROM users WHERE name = ?", (name,)
                )
            ).fetchone()
            return None if row is None else User(*row)

    async def add_session(self, session_hash: str, user: str, now: float, expires_at: float) -> None:
        with _available():
            async with self._transaction() as db:
                await db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
                await db.execute(
                    "INSERT INTO sessions (session_hash, user_name, created_at, expires_at) VALUES (?, ?, ?, ?)",
                    (session_hash, user, now, expires_at),
                )

    async def lookup_session(self, session_hash: str, now: float) -> Session | None:
        with _available():
            row = await (
                await self._reader.execute(
                    "SELECT u.name, u.role, s.expires_at FROM sessions s JOIN users u ON u.name = s.user_name"
                    " WHERE s.session_hash = ? AND s.expires_at > ?",
                    (session_hash, now),
                )
            ).fetchone()
            return None if row is None else Session(*row)

    async def delete_session(self, session_hash: str) -> None:
        with _available():
            async with self._transaction() as db:
                await db.execute("DELETE FROM sessions WHERE session_hash = ?", (session_hash,))

    # ------------------------------------------------------------------ analytics

    async def _analytics(self, build: Callable[[Params], str]) -> list[Any]:
        params = Params(lambda _: "?")
        sql = build(params)
        with _available():
            return list(await self._reader.execute_fetchall(sql, params.values))

    async def analytics_counts(self, query: CountsQuery) -> list[tuple[Any, int]]:
        return [(r[0], int(r[1])) for r in await self._analytics(lambda p: counts_sql(query, p))]

    async def analytics_hours_by_type(self, window: Window) -> list[tuple[int, str, int]]:
        return [(int(r[0]), r[1], int(r[2])) for r in await self._analytics(lambda p: hours_by_type_sql(window, p))]

    async def analytics_traffic(self, window: Window, limit: int) -> list[TrafficRow]:
        return traffic_rows(await self._analytics(lambda p: traffic_sql(window, limit, p)))

    async def analytics_air(self, window: Window, limit: int) -> list[AirRow]:
        return air_rows(await self._analytics(lambda p: air_sql(window, limit, p)))

    async def analytics_speed(self, window: Window, limit: int) -> list[SpeedRow]:
        return speed_rows(await self._analytics(lambda p: speed_sql(window, limit, p)))

    def pool_stats(self) -> PoolStats:
        # One writer connection (serialised by a lock) and one reader.
        return PoolStats(size=2, max_size=2, in_use=1 if self._lock.locked() else 0)

    # ------------------------------------------------------------------ retention

    async def maintain(
        self, rules: RetentionRules, layout: PartitionLayout, now: float, retention: bool = True
    ) -> MaintenanceReport:
        """One table, no partitions: expired events are deleted by type and ts, a chunk per transaction so
        batches are stored in between."""
        report = MaintenanceReport()
        if not retention:
            return report
        with _available():
            types = [r[0] for r in await self._reader.execute_fetchall("SELECT DISTINCT type FROM events")]
            for type_ in types:
                cutoff = rules.cutoff(type_, now)
                while cutoff is not None:
                    async with self._transaction() as db:
                        rows = list(
                            await db.execute_fetchall(
                                "DELETE FROM events WHERE n IN (SELECT n FROM events WHERE type = ? AND ts < ? LIMIT ?)"
                                " RETURNING media",
                                (type_, cutoff, _RETENTION_CHUNK),
                            )
                        )
                    report.rows_trimmed += len(rows)
                    report.media.update(sha for (media,) in rows for sha in orjson.loads(media))
                    if len(rows) < _RETENTION_CHUNK:
                        break
        return report

    async def release_media(self, sha256s: list[str], delete: Callable[[str], Awaitable[None]]) -> list[str]:
        """One scan of the events with media per 5,000 files, in the write transaction that forgets them and in
        which their files are deleted, so no batch can refer to a file between the check and its removal, and
        an upload of one waits until its file is gone, then stores it again."""
        out: list[str] = []
        with _available():
            for i in range(0, len(sha256s), _RETENTION_CHUNK):
                chunk = orjson.dumps(sha256s[i : i + _RETENTION_CHUNK]).decode()
                async with self._transaction() as db:
                    rows = await db.execute_fetchall(
                        "DELETE FROM media WHERE sha256 IN (SELECT value FROM json_each(?)) AND sha256 NOT IN"
                        " (SELECT j.value FROM events e, json_each(e.media) j WHERE e.media <> '[]'"
                        " AND j.value IN (SELECT value FROM json_each(?))) RETURNING sha256",
                        (chunk, chunk),
                    )
                    released = sorted(r[0] for r in rows)
                    for sha in released:
                        await delete(sha)
                out += released
        return out
