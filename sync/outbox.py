"""The durable local store of accepted events: a SQLite file in WAL mode.

An event is *accepted* once the transaction holding it has committed; ``put``
returns only then. One writer task owns all mutations and commits concurrent
puts together (group commit), so a burst of producers costs one fsync per group
rather than one per event. Sync reads through a second, read-only connection,
which in WAL mode only ever sees committed rows: nothing uncommitted can be sent.

How a group is committed. The common case (no media, room under the cap) is a
single multi-row ``INSERT`` on a connection in autocommit mode: SQLite runs one
statement as one atomic transaction, so no BEGIN/COMMIT round trips are needed
and the writer may queue a second group on the connection while the first is
still being written. Producers of one group then make their next events while
the other group is on disk, which keeps both cores busy. Everything else (a
group with media, a group that needs eviction, ack, reject, expiry) runs as an
explicit transaction that first waits until no fast group is queued.

Layout of the file (schema version 1):

- ``events``: one row per accepted event, keyed by ``seq``; ``body`` is the
  event's wire JSON, serialised once at ``put`` so sync never re-encodes it.
- ``media``: redacted JPEG bytes by sha256, reference-counted by events.
- ``dead_letters``: events the receiver rejected, with the reason.
- ``counters``: evictions and expiries by reason (``cap:media``, ``ttl:event``...).
- ``meta``: schema version and a high-water mark of ``seq``, rewritten by every
  transaction that deletes events, so ``seq`` never goes back after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiosqlite
import orjson
import structlog
import uuid_utils
from pydantic import BaseModel, ConfigDict, Field

from sync import limits
from sync.events import Accepted, NewEvent, Priority
from sync.files import private_file

log = structlog.get_logger("outbox")

SCHEMA_VERSION = 1
_CHUNK = 500  # ids per statement; far below SQLite's variable limit
_MAX_INFLIGHT = 2  # fast groups queued on the writer connection at once
_SPLIT_AT = 16  # pending events from which an idle writer splits them over two groups
_FAST_MAX_ROWS = 512  # rows per INSERT statement (8 columns: well under 32766 variables)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    priority INTEGER NOT NULL,
    type TEXT NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    body TEXT NOT NULL,
    media TEXT
);
CREATE INDEX IF NOT EXISTS events_by_priority ON events (priority, seq);
CREATE TABLE IF NOT EXISTS media (
    sha256 TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    refs INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    reason TEXT NOT NULL,
    rejected_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (reason TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""

_EVENT_COLUMNS = "(seq, id, priority, type, created, size, body, media)"
_INSERT_EVENT = f"INSERT INTO events {_EVENT_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_UPSERT_MEDIA = (
    "INSERT INTO media (sha256, data, refs) VALUES (?, ?, 1) ON CONFLICT (sha256) DO UPDATE SET refs = refs + 1"
)
_COUNT = "INSERT INTO counters (reason, n) VALUES (?, ?) ON CONFLICT (reason) DO UPDATE SET n = n + excluded.n"
# The newest event to delete so that at least ? bytes of one priority are freed, oldest first.
_EVICTION_CUTOFF = (
    "SELECT seq FROM (SELECT seq, sum(size) OVER (ORDER BY seq) AS running"
    " FROM events WHERE priority = ?) WHERE running >= ? LIMIT 1"
)


def _insert_rows_sql(n: int) -> str:
    return f"INSERT INTO events {_EVENT_COLUMNS} VALUES " + ",".join(["(?,?,?,?,?,?,?,?)"] * n)


class TtlConfig(BaseModel):
    """How long an unsent event may wait in the outbox, per priority (0 keeps it until evicted)."""

    model_config = ConfigDict(extra="forbid")

    alert: float = Field(30 * 86400, ge=0, description="Seconds an alert may wait unsent.")
    event: float = Field(14 * 86400, ge=0, description="Seconds an ordinary event may wait unsent.")
    telemetry: float = Field(7 * 86400, ge=0, description="Seconds a telemetry event may wait unsent.")
    media: float = Field(3 * 86400, ge=0, description="Seconds a media event (snapshot) may wait unsent.")

    def for_priority(self, priority: Priority) -> float:
        return float(getattr(self, priority.label))


class OutboxConfig(BaseModel):
    """The local SQLite outbox."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(
        Path("outbox.db"),
        description="Outbox file; a relative path is taken inside the state directory.",
    )
    durability: Literal["full", "normal"] = Field(
        "full",
        description="'full' fsyncs every commit and survives a power cut; 'normal' survives a process crash only.",
    )
    max_bytes: int = Field(
        1_000_000_000,
        gt=0,
        description="Byte budget for queued events and their media; past it the least important are evicted.",
    )
    max_event_bytes: int = Field(4_000_000, gt=0, description="Largest single event accepted (its JSON plus media).")
    ttl_seconds: TtlConfig = Field(default_factory=TtlConfig, description="Expiry of unsent events per priority.")
    expiry_interval_s: float = Field(60.0, gt=0, description="How often expired events are swept.")
    group_max_events: int = Field(4096, ge=1, description="Most events committed in one transaction.")
    dead_letters_keep: int = Field(1000, ge=1, description="Newest rejected events kept for the status page.")


class OutboxError(Exception):
    """Base of the outbox's refusals."""


class EventTooLarge(OutboxError):
    """One event is larger than ``max_event_bytes``."""


class OutboxFull(OutboxError):
    """The byte cap is taken by events at least as important as this one."""


class OutboxDiskFull(OutboxError):
    """The file system (or the page limit) refused the write; nothing committed was harmed."""


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """A queued event as sync reads it: its wire JSON and media references."""

    id: str
    seq: int
    priority: Priority
    body: str
    media: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event the receiver refused, kept with its reason for technicians."""

    id: str
    seq: int
    priority: Priority
    type: str
    reason: str
    rejected_at: float


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """A snapshot of the outbox for the status page, metrics and the sync status block."""

    depth: dict[str, int]
    bytes_by_priority: dict[str, int]
    bytes_used: int
    max_bytes: int
    oldest_age_s: float | None
    evicted: dict[str, int]
    dead_letters: int
    file_bytes: int
    next_seq: int
    durability: str


class _Pending:
    """An encoded event waiting for the writer; ``rest`` is its wire JSON after ``id`` and ``seq``."""

    __slots__ = ("id", "priority", "type", "rest", "size", "media", "media_refs", "future")

    def __init__(
        self,
        id: str,
        priority: Priority,
        type: str,
        rest: str,
        size: int,
        media: list[tuple[str, bytes]],
        media_refs: str | None,
    ) -> None:
        self.id = id
        self.priority = priority
        self.type = type
        self.rest = rest
        self.size = size
        self.media = media
        self.media_refs = media_refs
        self.future: asyncio.Future[Accepted]

    def row(self, seq: int, now: float) -> tuple:
        return (
            seq,
            self.id,
            int(self.priority),
            self.type,
            now,
            self.size,
            f'{{"id":"{self.id}","seq":{seq},{self.rest}',
            self.media_refs,
        )


_LABELS = {p: p.label for p in Priority}
_NO_MEDIA: list[tuple[str, bytes]] = []  # shared, never mutated
_ROW_OVERHEAD = 64  # id, seq and the row's other columns, roughly


def _encode(event: NewEvent) -> _Pending:
    """Serialise everything but ``seq`` now, so a bad payload fails its own put, not a group.

    This runs once per event on the event loop, so it is kept lean: orjson, no
    per-call encoder set-up, enum parsing only when the caller did not pass one,
    and nothing done for media when there is none.
    """
    kind = event.type
    if type(kind) is not str or not kind:
        raise ValueError("event type must be a non-empty string")
    priority = event.priority
    if type(priority) is not Priority:
        priority = Priority.parse(priority)
    location = event.location
    if event.media:
        media = [(hashlib.sha256(m).hexdigest(), bytes(m)) for m in event.media]
        shas = [sha for sha, _ in media]
        refs: str | None = " ".join(shas)
        media_bytes = sum(len(data) for _, data in media)
    else:
        media, shas, refs, media_bytes = _NO_MEDIA, [], None, 0
    try:
        encoded = orjson.dumps(
            {
                "ts": event.ts,
                "type": kind,
                "priority": _LABELS[priority],
                "location": location.as_dict() if location is not None else None,
                "data": event.data,
                "media": shas,
            }
        )
    except TypeError as exc:
        limits.check_value(event.data)  # names the field when a storable-value rule is what broke
        raise ValueError(f"event data is not JSON-serialisable: {exc}") from None
    limits.check_event(event.ts, event.data, encoded)  # nothing the receiver cannot store is committed
    rest = encoded[1:].decode()  # without its opening brace: the writer puts id and seq first
    return _Pending(str(uuid_utils.uuid7()), priority, kind, rest, len(rest) + _ROW_OVERHEAD + media_bytes, media, refs)


def _primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _is_disk_full(exc: BaseException) -> bool:
    return _primary_code(exc) == sqlite3.SQLITE_FULL


class _Corrupt(sqlite3.DatabaseError):
    """``quick_check`` found damage that SQLite did not report as an error code."""


def _is_corrupt(exc: BaseException) -> bool:
    # Only damage counts: a locked or unreadable file must not be moved aside.
    return isinstance(exc, _Corrupt) or _primary_code(exc) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _commit_error(exc: BaseException) -> OutboxError:
    if _is_disk_full(exc):
        return OutboxDiskFull(f"disk full, event not stored: {exc}")
    return OutboxError(f"commit failed: {exc}")


class Outbox:
    """Durable event queue with group commit, priorities, a byte cap and TTLs.

    Open with ``await Outbox.open(path, config)``; close with ``await outbox.close()``,
    which commits everything already handed to ``put``.
    """

    def __init__(self, path: Path, config: OutboxConfig) -> None:
        self.path = path
        self.config = config
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()  # held by explicit transactions
        self._idle = asyncio.Event()  # set while no fast group is queued on the connection
        self._idle.set()
        self._slot = asyncio.Event()  # set when a fast group finishes
        self._inflight = 0
        self._fast_tasks: set[asyncio.Task[None]] = set()
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._new = asyncio.Event()  # set by every commit, for the one consumer that syncs
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._expirer: asyncio.Task[None] | None = None
        self._next_seq = 1
        self._count = dict.fromkeys(Priority, 0)
        self._bytes = dict.fromkeys(Priority, 0)
        self.recovered_from: Path | None = None
        self.commits = 0
        self.last_progress = time.monotonic()

    # ------------------------------------------------------------------ open

    @classmethod
    async def open(cls, path: Path | str, config: OutboxConfig | None = None) -> Outbox:
        """Open (or create) the outbox file; a corrupt file is moved aside and replaced."""
        outbox = cls(Path(path), config or OutboxConfig())
        await outbox._open()
        return outbox

    async def _open(self) -> None:
        try:
            await self._connect()
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                await self._close_quietly()
                raise
            salvaged_seq = await self._close_quietly()
            aside = self._move_aside()
            self.recovered_from = aside
            log.error("outbox_corrupt_moved_aside", path=str(self.path), moved_to=str(aside), error=str(exc))
            await self._connect(seed_seq=salvaged_seq)
        self._writer = asyncio.create_task(self._write_loop(), name="outbox-writer")
        self._expirer = asyncio.create_task(self._expire_loop(), name="outbox-expiry")

    async def _connect(self, seed_seq: int | None = None) -> None:
        private_file(self.path)  # 0600 in a 0700 directory whatever the umask (SQLite's side files follow)
        # Autocommit: single statements commit themselves; transactions are explicit.
        db = await aiosqlite.connect(self.path, isolation_level=None, cached_statements=64)
        self._db = db
        sync_mode = "FULL" if self.config.durability == "full" else "NORMAL"
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA synchronous={sync_mode}")
        row = await (await db.execute("PRAGMA quick_check")).fetchone()
        if row is None or row[0] != "ok":
            raise _Corrupt(f"quick_check: {row[0] if row else 'no answer'}")
        await db.executescript(_SCHEMA)
        await db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        version = await self._meta("schema_version")
        if version != SCHEMA_VERSION:
            raise OutboxError(f"{self.path}: schema version {version} is newer than this software ({SCHEMA_VERSION})")
        start = seed_seq if seed_seq is not None else 1
        await db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('next_seq', ?)", (start,))
        stored = await self._meta("next_seq") or 1
        top = await (await db.execute("SELECT max(seq) FROM events")).fetchone()
        self._next_seq = max(stored, ((top[0] if top else None) or 0) + 1)
        async with db.execute("SELECT priority, count(*), total(size) FROM events GROUP BY priority") as cur:
            async for prio, n, size in cur:
                self._count[Priority(prio)] = n
                self._bytes[Priority(prio)] = int(size)
        self._reader = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True)
        await self._reader.execute("PRAGMA query_only=ON")

    async def _meta(self, key: str) -> int | None:
        assert self._db is not None
        row = await (await self._db.execute("SELECT value FROM meta WHERE key = ?", (key,))).fetchone()
        return None if row is None else int(row[0])

    async def _close_quietly(self) -> int:
        """Close a connection to a broken file, keeping its sequence high-water mark if readable."""
        salvaged: int | None = None
        if self._db is not None:
            with contextlib.suppress(Exception):
                salvaged = await self._meta("next_seq")
            with contextlib.suppress(Exception):
                await self._db.close()
            self._db = None
        # If even that is lost, time in microseconds exceeds any seq this pole has
        # issued, so seq still increases and the receiver sees a gap, not a repeat.
        return salvaged if salvaged is not None else time.time_ns() // 1000

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        os.replace(self.path, aside)
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                os.replace(side, Path(f"{aside}{suffix}"))
        return aside

    # ------------------------------------------------------------------ put

    async def put(self, event: NewEvent) -> Accepted:
        """Return once ``event`` is committed; raise an :class:`OutboxError` if it cannot be."""
        return await self._enqueue(self._check(_encode(event)))

    async def put_many(self, events: list[NewEvent]) -> list[Accepted]:
        """Commit several events; each one's receipt, in order. They may share transactions.

        All are validated first: one bad event fails the call before any is queued.
        """
        pendings = [self._check(_encode(e)) for e in events]
        return list(await asyncio.gather(*[self._enqueue(p) for p in pendings]))

    def _check(self, pending: _Pending) -> _Pending:
        if self._closing:
            raise OutboxError("outbox is closing")
        if self._writer is not None and self._writer.done():
            raise OutboxError("outbox writer has stopped")
        if pending.size > self.config.max_event_bytes:
            raise EventTooLarge(
                f"event of {pending.size} bytes exceeds outbox.max_event_bytes={self.config.max_event_bytes}"
            )
        return pending

    def _enqueue(self, pending: _Pending) -> asyncio.Future[Accepted]:
        pending.future = asyncio.get_running_loop().create_future()
        self._pending.append(pending)
        self._wake.set()
        return pending.future

    async def _write_loop(self) -> None:
        while True:
            self.last_progress = time.monotonic()
            if not self._pending:
                if self._closing:
                    await self._idle.wait()
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._lock.locked():
                async with self._lock:  # let an ack or expiry through, then carry on
                    continue
            if self._inflight >= _MAX_INFLIGHT:
                self._slot.clear()
                await self._slot.wait()
                continue
            take = len(self._pending)
            if not self._inflight and take >= _SPLIT_AT:
                # An idle connection and a crowd of producers: send half now and
                # half right behind it, so one half's producers make their next
                # events while the other half is being written.
                take = (take + 1) // 2
            group = self._pending[: min(take, self.config.group_max_events)]
            del self._pending[: len(group)]
            try:
                if self._needs_transaction(group):
                    await self._commit_slow(group)
                else:
                    self._dispatch_fast(group)
            except Exception as exc:  # the writer must outlive any one bad group
                log.exception("outbox_group_failed", events=len(group))
                for p in group:
                    if not p.future.done():
                        p.future.set_exception(_commit_error(exc))

    def _needs_transaction(self, group: list[_Pending]) -> bool:
        if len(group) > _FAST_MAX_ROWS:
            return True
        incoming = 0
        for p in group:
            if p.media:
                return True
            incoming += p.size
        return self.bytes_used + incoming > self.config.max_bytes

    def _dispatch_fast(self, group: list[_Pending]) -> None:
        """Queue the group as one INSERT statement without waiting for it to finish."""
        seq0 = self._next_seq
        self._next_seq += len(group)
        now = time.time()
        params: list = []
        for i, p in enumerate(group):
            params.extend(p.row(seq0 + i, now))
        # Count the bytes now so the cap check of the next group sees them; undone on failure.
        self._account(group, +1)
        self._inflight += 1
        self._idle.clear()
        task = asyncio.create_task(self._commit_fast(group, seq0, params))
        self._fast_tasks.add(task)
        task.add_done_callback(self._fast_tasks.discard)

    async def _commit_fast(self, group: list[_Pending], seq0: int, params: list) -> None:
        assert self._db is not None
        try:
            await self._db.execute(_insert_rows_sql(len(group)), params)
        except Exception as exc:
            self._account(group, -1)
            error = _commit_error(exc)
            log.error("outbox_commit_failed", error=str(exc), events=len(group))
            for p in group:
                p.future.set_exception(error)
        else:
            self.commits += 1
            self._new.set()
            for i, p in enumerate(group):
                if not p.future.done():  # a cancelled put still committed its event
                    p.future.set_result(Accepted(p.id, seq0 + i))
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()
            self._slot.set()

    async def _commit_slow(self, group: list[_Pending]) -> None:
        """Commit a group that carries media or needs room, in one explicit transaction."""
        try:
            async with self._transaction() as db:
                plan, refused = self._plan_room(group)
                if refused:
                    group = [p for p in group if p not in refused]
                freed = await self._evict(plan) if plan else []
                seq0 = self._next_seq
                self._next_seq += len(group)
                now = time.time()
                media_rows = [m for p in group for m in p.media]
                if media_rows:
                    await db.executemany(_UPSERT_MEDIA, media_rows)
                await db.executemany(_INSERT_EVENT, [p.row(seq0 + i, now) for i, p in enumerate(group)])
        except Exception as exc:
            error = _commit_error(exc)
            log.error("outbox_commit_failed", error=str(exc), events=len(group))
            for p in group:
                if not p.future.done():
                    p.future.set_exception(error)
            return
        self._forget(freed)
        self._account(group, +1)
        self.commits += 1
        if group:
            self._new.set()
        for p in refused:
            p.future.set_exception(
                OutboxFull(
                    f"outbox full: its {self.config.max_bytes} bytes are taken by events of priority "
                    f"{p.priority.label} or higher"
                )
            )
        for i, p in enumerate(group):
            if not p.future.done():
                p.future.set_result(Accepted(p.id, seq0 + i))

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """An explicit write transaction, alone on the connection.

        It records the seq high-water mark, so deleting the newest event can never
        let a restart hand out its seq again.
        """
        assert self._db is not None
        db = self._db
        async with self._lock:
            await self._idle.wait()
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                await db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (self._next_seq,))
                await db.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back (it does on SQLITE_FULL); keep the first error.
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise

    def _account(self, group: list[_Pending], sign: int) -> None:
        for p in group:
            self._count[p.priority] += sign
            self._bytes[p.priority] += sign * p.size

    def _forget(self, freed: list[tuple[Priority, int]]) -> None:
        for prio, size in freed:
            self._count[prio] -= 1
            self._bytes[prio] -= size

    def _plan_room(self, group: list[_Pending]) -> tuple[dict[Priority, int], list[_Pending]]:
        """Decide what to evict so the group fits the cap, and which of it cannot fit.

        An event may displace only events of its own or lower importance, least
        important and oldest first, so alerts go last and never make way for media.
        """
        free = self.config.max_bytes - self.bytes_used
        if sum(p.size for p in group) <= free:
            return {}, []
        evictable = dict(self._bytes)
        plan: dict[Priority, int] = {}
        refused: list[_Pending] = []
        for p in sorted(group, key=lambda p: p.priority):
            if p.size <= free:
                free -= p.size
                continue
            need = p.size - free
            if sum(b for prio, b in evictable.items() if prio >= p.priority) < need:
                refused.append(p)
                continue
            for prio in sorted(Priority, reverse=True):
                if need <= 0 or prio < p.priority:
                    break
                take = min(need, evictable[prio])
                if take:
                    evictable[prio] -= take
                    plan[prio] = plan.get(prio, 0) + take
                    need -= take
            free = 0
        return plan, refused

    async def _evict(self, plan: dict[Priority, int]) -> list[tuple[Priority, int]]:
        """Delete the oldest events of each priority until ``plan[priority]`` bytes are free."""
        assert self._db is not None
        freed: list[tuple[Priority, int]] = []
        for prio, want in sorted(plan.items(), reverse=True):
            cutoff = await (await self._db.execute(_EVICTION_CUTOFF, (int(prio), want))).fetchone()
            params: tuple[int, ...]
            if cutoff is None:
                sql, params = "DELETE FROM events WHERE priority = ?", (int(prio),)
            else:
                sql, params = "DELETE FROM events WHERE priority = ? AND seq <= ?", (int(prio), cutoff[0])
            removed = await self._delete(sql + " RETURNING priority, size, media", params)
            if removed:
                freed.extend(removed)
                await self._db.execute(_COUNT, (f"cap:{prio.label}", len(removed)))
                log.warning("outbox_evicted", priority=prio.label, events=len(removed), reason="cap")
        return freed

    async def _delete(self, sql: str, params: tuple[object, ...]) -> list[tuple[Priority, int]]:
        """Run a ``DELETE ... RETURNING priority, size, media`` and release the media it held."""
        assert self._db is not None
        rows = await self._db.execute_fetchall(sql, params)
        shas = [sha for _, _, media in rows if media for sha in media.split()]
        if shas:
            await self._db.executemany("UPDATE media SET refs = refs - 1 WHERE sha256 = ?", [(s,) for s in shas])
            await self._db.execute("DELETE FROM media WHERE refs <= 0")
        return [(Priority(prio), size) for prio, size, _ in rows]

    # ------------------------------------------------------------------ sync side

    async def next_batch(
        self, max_events: int, max_bytes: int, exclude_seqs: Collection[int] = ()
    ) -> list[OutboxRecord]:
        """The most important, oldest committed events: at least one if any, within the limits.

        ``max_bytes`` bounds the events' JSON; their media is uploaded separately.
        ``exclude_seqs`` skips events already on their way (a pipelined uplink
        prepares the next batch while the previous one is in flight).
        """
        assert self._reader is not None
        sql = "SELECT id, seq, priority, body, media FROM events"
        params: list[object] = []
        if exclude_seqs:
            # Checked against the (priority, seq) index while scanning it, before any row is read.
            sql += " WHERE seq NOT IN (SELECT value FROM json_each(?))"
            params.append(orjson.dumps(list(exclude_seqs)).decode())
        rows = await self._reader.execute_fetchall(f"{sql} ORDER BY priority, seq LIMIT ?", (*params, max_events))
        out: list[OutboxRecord] = []
        total = 0
        priorities = list(Priority)
        for id_, seq, prio, body, media in rows:
            total += len(body)
            if out and total > max_bytes:
                break
            out.append(OutboxRecord(id_, seq, priorities[prio], body, tuple(media.split()) if media else ()))
        return out

    async def wait_new(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a commit since the last call; True if there was one.

        Meant for a single consumer (the uplink): it consumes the notification.
        """
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that lands as the event fires, and the uplink would never stop.
            async with asyncio.timeout(timeout):
                await self._new.wait()
        except TimeoutError:
            return False
        self._new.clear()
        return True

    async def media(self, sha256: str) -> bytes | None:
        """The stored JPEG for a sha256 reference, if still held."""
        assert self._reader is not None
        row = await (await self._reader.execute("SELECT data FROM media WHERE sha256 = ?", (sha256,))).fetchone()
        return None if row is None else bytes(row[0])

    async def ack(self, ids: list[str]) -> int:
        """Remove delivered events; unknown ids are ignored. Returns how many were removed."""
        if not ids:
            return 0
        freed: list[tuple[Priority, int]] = []
        async with self._transaction():
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                freed += await self._delete(
                    f"DELETE FROM events WHERE id IN ({marks}) RETURNING priority, size, media", tuple(chunk)
                )
        self._forget(freed)
        return len(freed)

    async def reject(self, id: str, reason: str) -> bool:
        """Move one event to the dead letters with the receiver's reason; False if it is not queued."""
        return await self.reject_many({id: reason}) == 1

    async def reject_many(self, reasons: dict[str, str]) -> int:
        """Move events to the dead letters, each with its reason; the queue moves on without them."""
        if not reasons:
            return 0
        now = time.time()
        freed: list[tuple[Priority, int]] = []
        async with self._transaction() as db:
            for id_, reason in reasons.items():
                await db.execute(
                    "INSERT OR REPLACE INTO dead_letters (id, seq, priority, type, body, reason, rejected_at)"
                    " SELECT id, seq, priority, type, body, ?, ? FROM events WHERE id = ?",
                    (reason[:2000], now, id_),
                )
                freed += await self._delete("DELETE FROM events WHERE id = ? RETURNING priority, size, media", (id_,))
            await db.execute(
                "DELETE FROM dead_letters WHERE id NOT IN"
                " (SELECT id FROM dead_letters ORDER BY rejected_at DESC, seq DESC LIMIT ?)",
                (self.config.dead_letters_keep,),
            )
        self._forget(freed)
        if freed:
            log.warning("outbox_dead_lettered", events=len(freed), reasons=sorted(set(reasons.values()))[:5])
        return len(freed)

    async def dead_letters(self, limit: int = 50) -> list[DeadLetter]:
        """The newest rejected events, newest first."""
        assert self._reader is not None
        rows = await self._reader.execute_fetchall(
            "SELECT id, seq, priority, type, reason, rejected_at FROM dead_letters"
            " ORDER BY rejected_at DESC, seq DESC LIMIT ?",
            (limit,),
        )
        return [DeadLetter(i, s, Priority(p), t, r, at) for i, s, p, t, r, at in rows]

    # ------------------------------------------------------------------ expiry

    async def expire(self, now: float | None = None) -> dict[str, int]:
        """Delete events older than their priority's TTL; returns counts by reason."""
        now = time.time() if now is None else now
        counts: dict[str, int] = {}
        freed: list[tuple[Priority, int]] = []
        async with self._transaction() as db:
            for prio in Priority:
                ttl = self.config.ttl_seconds.for_priority(prio)
                if ttl <= 0 or not self._count[prio]:
                    continue
                removed = await self._delete(
                    "DELETE FROM events WHERE priority = ? AND created < ? RETURNING priority, size, media",
                    (int(prio), now - ttl),
                )
                if removed:
                    counts[f"ttl:{prio.label}"] = len(removed)
                    await db.execute(_COUNT, (f"ttl:{prio.label}", len(removed)))
                    freed += removed
        self._forget(freed)
        if counts:
            log.warning("outbox_expired", **counts)
        return counts

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.expiry_interval_s)
            try:
                await self.expire()
            except sqlite3.Error as exc:
                log.error("outbox_expiry_failed", error=str(exc))

    # ------------------------------------------------------------------ state

    @property
    def backlog(self) -> int:
        """Events queued (committed or being committed), all priorities."""
        return sum(self._count.values())

    @property
    def bytes_used(self) -> int:
        return sum(self._bytes.values())

    def writer_alive(self, within_s: float) -> bool:
        """False if puts are waiting and the writer has not moved for ``within_s`` seconds."""
        waiting = bool(self._pending) or self._inflight > 0
        stuck = time.monotonic() - self.last_progress > within_s
        return not (waiting and stuck) and not (self._writer is not None and self._writer.done())

    async def stats(self) -> OutboxStats:
        assert self._reader is not None
        reader = self._reader
        # created follows seq, so the lowest seq is the oldest without a scan.
        oldest = await (await reader.execute("SELECT created FROM events ORDER BY seq LIMIT 1")).fetchone()
        evicted = {str(r): int(n) for r, n in await reader.execute_fetchall("SELECT reason, n FROM counters")}
        dead = await (await reader.execute("SELECT count(*) FROM dead_letters")).fetchone()
        pages = await (await reader.execute("PRAGMA page_count")).fetchone()
        page_size = await (await reader.execute("PRAGMA page_size")).fetchone()
        return OutboxStats(
            depth={p.label: self._count[p] for p in Priority},
            bytes_by_priority={p.label: self._bytes[p] for p in Priority},
            bytes_used=self.bytes_used,
            max_bytes=self.config.max_bytes,
            oldest_age_s=None if oldest is None else max(0.0, time.time() - oldest[0]),
            evicted=evicted,
            dead_letters=int(dead[0]) if dead else 0,
            file_bytes=int(pages[0]) * int(page_size[0]) if pages and page_size else 0,
            next_seq=self._next_seq,
            durability=self.config.durability,
        )

    # ------------------------------------------------------------------ close

    async def close(self) -> None:
        """Commit everything already handed to ``put``, then close the file."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
        if self._expirer is not None:
            self._expirer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expirer
        for conn in (self._reader, self._db):
            if conn is not None:
                await conn.close()
        self._reader = self._db = None
