"""PostgreSQL: the time partitions of the events table and retention on them.

``events`` is range-partitioned by the event's own ``ts`` (epoch seconds): retention is about when
things happened in the city, not when a pole's backlog reached the receiver. Partitions cover whole
UTC days (``events_pYYYYMMDD``, ``partition_days`` each) and are created ahead of time; a row
whose ts has no partition (far in the past or the future: a broken clock, a pole back after
months) lands in ``events_default``.

A partitioned table's unique index must contain the partition key, so ``(pole_id, event_id)``
cannot be unique on ``events`` itself. It is unique on ``event_keys``, a plain table inserted in
the same statement as the events (``ON CONFLICT DO NOTHING``): only the keys that were new go on
into ``events``, so replicas racing on one replay cannot both store it. A key lives exactly as long
as its event: both go in one statement, and retention deletes the keys of the events it removes.

Maintenance (one process at a time, on an advisory lock) takes no lock that makes ingest wait for
long: a partition is made as a plain table and attached while ingest waits (``SHARE ROW EXCLUSIVE``
on ``events``: readers go on; an insert that ran alongside an attach would route by the partitions it
saw before and fail); making one or detaching one waits at most ``lock_timeout_s`` for its brief
lock, else that step waits for the next run. Expired events go by

- dropping a partition when every type in it is expired (all such partitions detached under one
  brief lock; then their keys deleted, from the detached tables, in chunks, and the tables dropped);
- otherwise trimming: deleting the types whose retention ended before the partition's end, from
  partitions older than the shortest retention (never the partition being written), through a
  ``(type, ts)`` index each such partition gets when it first needs trimming;
- in ``events_default``, deleting by type and ts.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from receiver.store.base import DAY_S, MaintenanceReport, PartitionLayout, RetentionRules

# Any constant: one maintainer at a time across all receivers and cron jobs.
MAINTENANCE_LOCK = 0x5350_0007
CHUNK = 10_000
# Migration 7 gives partitions to existing events of at most this many days ago; older ones go to the default.
MIGRATION_DAYS_BACK = 400
_EXPIRED_PREFIX = "events_expired_"
_BOUNDS = re.compile(r"FROM \('?([-0-9.e+]+)'?\) TO \('?([-0-9.e+]+)'?\)")


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    lower: float
    upper: float


def partition_name(lower: float) -> str:
    return "events_p" + time.strftime("%Y%m%d", time.gmtime(lower))


async def list_partitions(conn: asyncpg.Connection) -> list[Partition]:
    """The range partitions of ``events`` (not the default), oldest first."""
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'events'::regclass"
    )
    out = []
    for name, bound in rows:
        found = _BOUNDS.search(bound)
        if found:
            out.append(Partition(name, float(found[1]), float(found[2])))
    return sorted(out, key=lambda p: p.lower)


class Maintainer:
    """One maintenance run on one connection that holds the maintenance lock."""

    def __init__(self, conn: asyncpg.Connection, layout: PartitionLayout, report: MaintenanceReport) -> None:
        self.conn = conn
        self.layout = layout
        self.report = report
        self._lock_timeout = f"SET LOCAL lock_timeout = '{int(layout.lock_timeout_s * 1000)}ms'"

    async def create_ahead(self, now: float) -> None:
        """Partitions from the newest one's end (or a window behind ``now``) to ``ahead_days`` past ``now``."""
        existing = await list_partitions(self.conn)
        width = self.layout.days * DAY_S
        behind = math.floor(now / DAY_S) * DAY_S - self.layout.ahead_days * DAY_S
        start = max(existing[-1].upper, behind) if existing else behind
        while start < now + self.layout.ahead_days * DAY_S:
            if not await self._create(Partition(partition_name(start), start, start + width)):
                return
            start += width

    async def _create(self, part: Partition) -> bool:
        """Create and attach ``part``, moving into it the rows of the default partition it covers."""
        name = part.name
        try:
            async with self.conn.transaction():
                await self.conn.execute(self._lock_timeout)
                # Inserts wait until the partition is attached: one that had already looked up the
                # partitions would route a row of the new range to the default, then fail its new bound.
                await self.conn.execute("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
                await self.conn.execute("LOCK TABLE events_default IN ACCESS EXCLUSIVE MODE")
                await self.conn.execute(f"CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS)")
                await self.conn.execute(
                    f"WITH moved AS (DELETE FROM events_default WHERE ts >= $1 AND ts < $2 RETURNING *)"
                    f" INSERT INTO {name} SELECT * FROM moved",
                    part.lower,
                    part.upper,
                )
                # The constraint proves the rows fit, so attaching does not scan the new table.
                lower, upper = repr(part.lower), repr(part.upper)
                await self.conn.execute(
                    f"ALTER TABLE {name} ADD CONSTRAINT {name}_range CHECK (ts >= {lower} AND ts < {upper})"
                )
                await self.conn.execute(
                    f"ALTER TABLE events ATTACH PARTITION {name} FOR VALUES FROM ({lower}) TO ({upper})"
                )
        except asyncpg.LockNotAvailableError:
            self.report.deferred += 1
            return False
        self.report.partitions_created += 1
        return True

    async def apply(self, rules: RetentionRules, now: float) -> None:
        await self._purge_detached()  # left by a run that stopped between detaching and dropping
        newest = rules.newest_cutoff(now)
        if newest is None:
            return
        oldest = rules.oldest_cutoff(now)
        doomed: list[Partition] = []
        trims: list[tuple[Partition, list[str]]] = []
        for part in await list_partitions(self.conn):
            if part.upper > newest:
                break  # from here on nothing is wholly expired: the shortest retention has not passed
            if oldest is not None and part.upper <= oldest:
                doomed.append(part)
                continue
            types = await self._types(part.name)
            if types is None:
                continue
            expired = [t for t in types if (c := rules.cutoff(t, now)) is not None and c >= part.upper]
            if len(expired) == len(types):
                doomed.append(part)
            else:
                trims.append((part, expired))
        if doomed:
            await self._detach(doomed)
            await self._purge_detached()
        for part, expired in trims:
            for type_ in expired:
                await self._trim(part.name, type_, part.upper)
        for type_ in await self._types("events_default") or []:
            cutoff = rules.cutoff(type_, now)
            if cutoff is not None:
                await self._trim("events_default", type_, cutoff)

    async def _types(self, table: str) -> list[str] | None:
        """The event types in ``table``, read from its ``(type, ts)`` index (made now if it has none) by
        skipping from one type to the next; None if the index could not be made now."""
        index = f"{table}_type_ts"
        # Looked up first: CREATE INDEX IF NOT EXISTS would take its lock on the table even when it exists.
        if await self.conn.fetchval("SELECT to_regclass($1)", index) is None:
            try:
                async with self.conn.transaction():
                    await self.conn.execute(self._lock_timeout)
                    await self.conn.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {table} (type, ts)")
            except asyncpg.LockNotAvailableError:
                self.report.deferred += 1
                return None
        rows = await self.conn.fetch(
            f"WITH RECURSIVE t AS ((SELECT type FROM {table} ORDER BY type LIMIT 1) UNION ALL"
            f" SELECT (SELECT type FROM {table} WHERE type > t.type ORDER BY type LIMIT 1) FROM t"
            " WHERE t.type IS NOT NULL) SELECT type FROM t WHERE type IS NOT NULL"
        )
        return [r[0] for r in rows]

    async def _chunk(self, sql: str, *args: object) -> asyncpg.Record:
        """One chunk of retention in its own transaction. A chunk's keys are deleted by a join of its
        10,000 rows with event_keys; planned as a hash join, it would read the whole key table each time."""
        async with self.conn.transaction():
            await self.conn.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
            row = await self.conn.fetchrow(sql, *args)
        assert row is not None
        return row

    async def _trim(self, table: str, type_: str, before: float) -> None:
        """Delete the events of ``type_`` stamped before ``before`` from ``table``, with their keys, in chunks
        (one short transaction each)."""
        while True:
            count, media = await self._chunk(
                f"WITH gone AS (DELETE FROM {table} WHERE ctid = ANY(ARRAY("
                f"SELECT ctid FROM {table} WHERE type = $1 AND ts < $2 LIMIT {CHUNK}))"
                " RETURNING pole_id, event_id, media),"
                " k AS (DELETE FROM event_keys USING gone"
                " WHERE event_keys.pole_id = gone.pole_id AND event_keys.event_id = gone.event_id)"
                " SELECT (SELECT count(*) FROM gone),"
                " ARRAY(SELECT DISTINCT jsonb_array_elements_text(media) FROM gone WHERE media <> '[]'::jsonb)",
                type_,
                before,
            )
            self.report.rows_trimmed += count
            self.report.media.update(media)
            if count < CHUNK:
                return

    async def _detach(self, parts: list[Partition]) -> None:
        """Detach ``parts`` under one brief exclusive lock on ``events``, renamed so that a run that stops
        before dropping them is finished by the next one."""
        try:
            async with self.conn.transaction():
                await self.conn.execute(self._lock_timeout)
                for part in parts:
                    await self.conn.execute(f"ALTER TABLE events DETACH PARTITION {part.name}")
                    await self.conn.execute(
                        f"ALTER TABLE {part.name} RENAME TO {_EXPIRED_PREFIX}{part.name.removeprefix('events_')}"
                    )
        except asyncpg.LockNotAvailableError:
            self.report.deferred += 1

    async def _purge_detached(self) -> None:
        """Delete the keys of every detached expired partition's events, in chunks, then drop it."""
        tables = await self.conn.fetch(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND starts_with(relname, $1)"
            " AND relnamespace = current_schema()::regnamespace",
            _EXPIRED_PREFIX,
        )
        for (table,) in tables:
            after = -1
            while True:
                last, count, media = await self._chunk(
                    f"WITH chunk AS (SELECT n, pole_id, event_id, media FROM {table} WHERE n > $1 ORDER BY n"
                    f" LIMIT {CHUNK}),"
                    " k AS (DELETE FROM event_keys USING chunk"
                    " WHERE event_keys.pole_id = chunk.pole_id AND event_keys.event_id = chunk.event_id)"
                    " SELECT (SELECT max(n) FROM chunk), (SELECT count(*) FROM chunk),"
                    " ARRAY(SELECT DISTINCT jsonb_array_elements_text(media) FROM chunk WHERE media <> '[]'::jsonb)",
                    after,
                )
                self.report.rows_dropped += count
                self.report.media.update(media)
                if count < CHUNK:
                    break
                after = last
            await self.conn.execute(f"DROP TABLE {table}")
            self.report.partitions_dropped += 1


async def release_media(
    conn: asyncpg.Connection, sha256s: list[str], delete: Callable[[str], Awaitable[None]]
) -> list[str]:
    """Of ``sha256s``, those no event refers to, removed from the media table and their files deleted, a
    thousand files a transaction. The rows are locked first, so the reference check cannot miss an event
    whose batch is being stored (its media check locks the rows it reports, ``FOR SHARE``), and deleted
    before their files, so an upload of one of them waits until the file is gone and then stores it
    again. The references are found with one scan of the partial GIN index on ``media`` per partition."""
    out: list[str] = []
    for i in range(0, len(sha256s), 1000):
        chunk = sorted(sha256s[i : i + 1000])
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM media WHERE sha256 = ANY($1::text[]) ORDER BY sha256 FOR UPDATE", chunk)
            referenced = {
                r[0]
                for r in await conn.fetch(
                    "SELECT DISTINCT r.sha FROM events e, jsonb_array_elements_text(e.media) AS r(sha)"
                    " WHERE e.media @> ANY($1::jsonb[]) AND e.media <> '[]'::jsonb AND r.sha = ANY($2::text[])",
                    [[sha] for sha in chunk],
                    chunk,
                )
            }
            free = [sha for sha in chunk if sha not in referenced]
            rows = await conn.fetch("DELETE FROM media WHERE sha256 = ANY($1::text[]) RETURNING sha256", free)
            released = sorted(r[0] for r in rows)
            for sha in released:
                await delete(sha)
        out += released
    return out
