"""The durable local store of accepted events: a SQLite file in WAL mode, with media files beside it.

An event is *accepted* once the transaction holding it has committed; ``put``
returns only then. One writer task owns all mutations and commits puts together
(group commit), by load and by time. Sync reads through a second, read-only
connection, which in WAL mode only ever sees committed rows: nothing
uncommitted can be sent.

Group commit by load. Concurrent puts share commits as they come: a burst of
producers costs one fsync per group rather than one per event.

Group commit by time. A pole puts some 20 events a second; committed one by one,
each 200-byte event would append several pages to the WAL (and the checkpoint
would write them again), wearing out the SD card at ~100 times the payload. So
an idle writer commits at most once per ``commit_interval_ms``: what arrives
within the window waits and shares the next commit, together with the
uplink's acknowledgements. A put therefore waits at most the window longer than
it used to. The window does not apply when waiting would only add latency:
when ``commit_at_once_events`` puts came within an eighth of the window (a
crowd of producers each awaiting its put, a big ``put_many``: their groups are
big without it; then, as before, a fast group being written is followed at once
by the next), when an uplink draining a backlog acknowledges hundreds of ids,
when an alert is waiting (``commit_alerts_at_once``) and when closing.

How a group is committed. The common case (no media, room under the cap, no
acknowledgement waiting) is a single multi-row ``INSERT`` on a connection in
autocommit mode: SQLite runs one statement as one atomic transaction, so no
BEGIN/COMMIT round trips are needed and the writer may queue a second group on
the connection while the first is still being written. Producers of one group
then make their next events while the other group is on disk, which keeps both
cores busy. Everything else (media, eviction, acknowledgements; reject and
expiry) runs as an explicit transaction that first waits until no fast group is
queued.

Layout of the file (schema version 2), chosen to write few pages per event:

- ``events``: one row per accepted event. Its rowid ``pos`` is
  ``priority << 56 | seq``, so the table itself is stored in the order sync reads
  it (priority, then seq) and needs no index: an insert writes the tail page of
  its priority, an acknowledgement the head. ``body`` is the event's wire JSON,
  serialised once at ``put`` so sync never re-encodes it. Acknowledgements name
  events by id: the outbox remembers the positions ``next_batch`` handed out; an
  id it did not hand out is looked for by a scan.
- ``dead_letters``: events the receiver rejected, with the reason.
- ``counters``: evictions and expiries by reason (``cap:media``, ``ttl:event``...).
- ``meta``: schema version and a high-water mark of ``seq``, written only by a
  transaction that deletes the newest event (otherwise the table itself holds
  the highest seq), so ``seq`` never goes back after a restart.
- Pages of 1 KiB: each commit rewrites the partly filled pages at the tail and
  head of each priority, and smaller pages waste less of them (measured at a
  pole's rate: ~20% less per event than with 2 KiB pages, about half as much as
  with 4 KiB). A row over ~1 KB continues in overflow pages of its own.
- The id, seq, priority and type columns are generated from the position and
  the body when read, never stored: fewer bytes per row.

Media (redacted JPEGs) are files named by their sha256 in ``<file>.media/``:
in the database each JPEG would be written twice (WAL, then checkpoint). A file
is written and fsynced, then its directory, before the transaction holding the
first row that references it commits, and removed after the last such row is
deleted; at open, files no row references (a crash in between) are removed. So
a committed row always has its file.

Schema version 1 (indexes on id and on (priority, seq), JPEGs in a table) is
migrated at open.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiosqlite
import orjson
import structlog
import uuid_utils
from pydantic import BaseModel, ConfigDict, Field

from sync import limits
from sync.events import Accepted, NewEvent, Priority
from sync.files import DIR_MODE, private_file
from sync.sqlitetx import rollback

log = structlog.get_logger("outbox")

SCHEMA_VERSION = 2
PAGE_SIZE = 1024
_REPAGE_MAX_BYTES = 64 * 2**20  # an older file is rewritten with PAGE_SIZE pages at open only when that is quick
_SHIFT = 56  # pos = priority << 56 | seq: seq stays far below 2**56, even one seeded from the clock in µs
_SEQ_MASK = (1 << _SHIFT) - 1
_SENT_KEEP = 100_000  # positions of ids handed out by next_batch, remembered for ack and reject
# Acknowledged ids that commit without waiting for the window: only an uplink draining a backlog
# acknowledges that many at once, and delaying it would slow the drain; a separate commit for so
# many deletions costs a few bytes per event.
_ACKS_AT_ONCE = 256
_MAX_INFLIGHT = 2  # fast groups queued on the writer connection at once
_SPLIT_AT = 16  # pending events from which an idle writer under load splits them over two groups
_FAST_MAX_ROWS = 512  # rows per INSERT statement (5 columns: well under 32766 variables)
_SHA256 = re.compile(r"[0-9a-f]{64}")

_EVENTS_TABLE = """
CREATE TABLE {name} (
    pos INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    body TEXT NOT NULL,
    media TEXT,
    -- Computed when read, never stored: the position and the body hold them already.
    seq INTEGER AS (pos & 0xFFFFFFFFFFFFFF),
    priority INTEGER AS (pos >> 56),
    id TEXT AS (substr(body, 8, 36)),
    type TEXT AS (json_extract(body, '$.type'))
);
"""
_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
_SCHEMA = (
    _EVENTS_TABLE.format(name="events")
    + """
CREATE TABLE dead_letters (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    reason TEXT NOT NULL,
    rejected_at REAL NOT NULL
);
CREATE TABLE counters (reason TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""
)
_EVENT_COLUMNS = "(pos, created, size, body, media)"
_INSERT_EVENT = f"INSERT INTO events {_EVENT_COLUMNS} VALUES (?, ?, ?, ?, ?)"
# Version 1 keyed events by seq with indexes on id and (priority, seq), and kept JPEGs in a table
# (written out as files before this runs).
_MIGRATE_V1 = (
    _EVENTS_TABLE.format(name="events_v2")
    + f"""
INSERT INTO events_v2 {_EVENT_COLUMNS}
    SELECT (priority << {_SHIFT}) | seq, created, size, body, media FROM events;
DROP TABLE events;
ALTER TABLE events_v2 RENAME TO events;
DROP TABLE media;
UPDATE meta SET value = 2 WHERE key = 'schema_version';
"""
)
_COUNT = "INSERT INTO counters (reason, n) VALUES (?, ?) ON CONFLICT (reason) DO UPDATE SET n = n + excluded.n"
_RETURNING = " RETURNING id, priority, size, media"
# The newest event to delete so that at least ? bytes of one priority are freed, oldest first.
_EVICTION_CUTOFF = (
    "SELECT pos FROM (SELECT pos, sum(size) OVER (ORDER BY pos) AS running"
    " FROM events WHERE pos >= ? AND pos < ?) WHERE running >= ? LIMIT 1"
)


def _insert_rows_sql(n: int) -> str:
    return f"INSERT INTO events {_EVENT_COLUMNS} VALUES " + ",".join(["(?,?,?,?,?)"] * n)


def _range(priority: Priority) -> tuple[int, int]:
    """The positions of one priority's events: [low, high)."""
    return int(priority) << _SHIFT, (int(priority) + 1) << _SHIFT


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
        description="Outbox file; a relative path is taken inside the state directory. Media go to '<path>.media/'.",
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
    commit_interval_ms: int = Field(
        1000,
        ge=0,
        description=(
            "Commit window: an idle outbox commits at most once per this many ms, so the puts and acknowledgements"
            " that arrive within it share one transaction and the SD card is written far less. A put (and a producer"
            " that awaits each put before making the next) may wait up to this long longer. 0 commits at once."
        ),
    )
    commit_at_once_events: int = Field(
        32,
        ge=1,
        description=(
            "Puts that, come within an eighth of the commit window, commit without waiting for the rest of it"
            " (a crowd of producers each awaiting its put, a big put_many: their groups are big anyway)."
            " Fewer concurrent producers than this share one commit per window."
        ),
    )
    commit_alerts_at_once: bool = Field(
        True, description="An alert commits at once, without waiting for the window, taking whatever waits with it."
    )
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
    """A snapshot of the outbox for the status page, metrics and the sync status block.

    ``file_bytes`` is the database and its JPEG files; ``written_bytes`` what the outbox
    has sent to the block device since it was opened (see :attr:`Outbox.written_bytes`),
    None where the kernel does not count it.
    """

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
    written_bytes: int | None


class _Pending:
    """An encoded event waiting for the writer; ``rest`` is its wire JSON after ``id`` and ``seq``."""

    __slots__ = ("id", "priority", "rest", "size", "media", "media_refs", "future")

    def __init__(
        self,
        id: str,
        priority: Priority,
        rest: str,
        size: int,
        media: list[tuple[str, bytes]],
        media_refs: str | None,
    ) -> None:
        self.id = id
        self.priority = priority
        self.rest = rest
        self.size = size
        self.media = media
        self.media_refs = media_refs
        self.future: asyncio.Future[Accepted]

    def row(self, seq: int, now: float) -> tuple:
        # The body starts with the id, where the table's generated ``id`` column finds it.
        body = f'{{"id":"{self.id}","seq":{seq},{self.rest}'
        return (int(self.priority) << _SHIFT | seq, now, self.size, body, self.media_refs)


@dataclass(slots=True)
class _Acks:
    """One ``ack`` call waiting for the writer."""

    ids: list[str]
    future: asyncio.Future[int]


@dataclass(slots=True)
class _Tx:
    """What a write transaction changes beyond the file, applied only once it has committed."""

    db: aiosqlite.Connection
    freed: list[tuple[Priority, int]] = field(default_factory=list)
    released: list[str] = field(default_factory=list)  # media references of the deleted rows
    added: list[str] = field(default_factory=list)  # media references of the inserted rows
    new_files: dict[str, int] = field(default_factory=dict)  # sha256 -> size of the JPEG files it wrote
    inserted: int = 0  # position of the newest row inserted, 0 if none
    seq_mark: int = 0  # the high-water mark written to meta, 0 if not


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
    return _Pending(str(uuid_utils.uuid7()), priority, rest, len(rest) + _ROW_OVERHEAD + media_bytes, media, refs)


def _primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
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


# ---------------------------------------------------------------------- files and write accounting


def _io_written(stat: str) -> int | None:
    """``write_bytes - cancelled_write_bytes`` of a /proc io file, None where the kernel does not count them.

    The kernel counts a page-cache page (4 KiB) each time a write dirties a clean one: what is later
    sent to the block device, less what was truncated before it was.
    """
    try:
        with open(stat) as f:
            fields = dict(line.split(": ", 1) for line in f.read().splitlines())
        return int(fields["write_bytes"]) - int(fields["cancelled_write_bytes"])
    except (OSError, KeyError, ValueError):
        return None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_files(directory: Path, blobs: dict[str, bytes]) -> int | None:
    """Write each blob to a file named by its sha256 and fsync it, then the directory.

    Runs in a worker thread; returns what that thread sent to the block layer doing so.
    """
    before = _io_written("/proc/thread-self/io")
    for sha, data in blobs.items():
        fd = os.open(directory / sha, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_dir(directory)  # the files' names are durable before any row names them
    after = _io_written("/proc/thread-self/io")
    return None if before is None or after is None else after - before


def _remove_files(directory: Path, names: Iterable[str]) -> None:
    # No directory fsync: a removal undone by a power cut leaves an orphan, cleaned at the next open.
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / name)


def _read_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _remove_orphans(directory: Path, referenced: Collection[str]) -> dict[str, int]:
    """Remove the files no committed row references (a crash between writing them and committing, or
    between committing a row's deletion and removing them); returns the sizes of the others."""
    kept: dict[str, int] = {}
    orphans: list[str] = []
    for entry in os.scandir(directory):
        if entry.name in referenced:
            kept[entry.name] = entry.stat().st_size
        else:
            orphans.append(entry.name)
    _remove_files(directory, orphans)
    return kept


class Outbox:
    """Durable event queue with group commit, priorities, a byte cap and TTLs.

    Open with ``await Outbox.open(path, config)``; close with ``await outbox.close()``,
    which commits everything already handed to ``put`` and ``ack``.
    """

    def __init__(self, path: Path, config: OutboxConfig) -> None:
        self.path = path
        self.media_dir = Path(f"{path}.media")
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
        self._acks: list[_Acks] = []
        self._ack_ids = 0  # ids waiting in self._acks
        self._urgent = False  # an alert is waiting and may not wait for the window
        self._window_ends = 0.0  # loop time before which an idle writer gathers rather than commits
        self._gathering_since = 0.0  # loop time the oldest waiting put arrived, or the last commit left
        self._wake = asyncio.Event()
        self._new = asyncio.Event()  # set by every commit, for the one consumer that syncs
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._expirer: asyncio.Task[None] | None = None
        self._next_seq = 1
        self._seq_mark = 1  # next_seq as last written to meta
        self._newest = 0  # position of the newest event inserted, 0 if unknown
        self._sent: dict[str, int] = {}  # id -> position, for the events next_batch handed out
        self._media_refs: dict[str, int] = {}  # sha256 -> committed rows referencing its file
        self._media_sizes: dict[str, int] = {}  # sha256 -> size of its file
        self._count = dict.fromkeys(Priority, 0)
        self._bytes = dict.fromkeys(Priority, 0)
        self._writer_tid: int | None = None  # native id of the writer connection's thread
        self._written_before = 0  # by writer threads already closed, and by media file writes
        self._written_counted = True
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
            try:
                await self._connect()
            except sqlite3.DatabaseError as exc:
                if not _is_corrupt(exc):
                    raise
                salvaged_seq = await self._close_quietly()
                aside = self._move_aside()
                self.recovered_from = aside
                log.error("outbox_corrupt_moved_aside", path=str(self.path), moved_to=str(aside), error=str(exc))
                await self._connect(seed_seq=salvaged_seq)
        except BaseException:
            # A refused file (a newer schema, a database error) leaves no connection thread behind.
            await self._close_quietly()
            if self._reader is not None:
                with contextlib.suppress(Exception):
                    await self._reader.close()
                self._reader = None
            raise
        self._writer = asyncio.create_task(self._write_loop(), name="outbox-writer")
        self._expirer = asyncio.create_task(self._expire_loop(), name="outbox-expiry")

    async def _connect(self, seed_seq: int | None = None) -> None:
        private_file(self.path)  # 0600 in a 0700 directory whatever the umask (SQLite's side files follow)
        # Autocommit: single statements commit themselves; transactions are explicit.
        db = await aiosqlite.connect(self.path, isolation_level=None, cached_statements=64)
        self._db = db
        await db.create_function("outbox_thread", 0, threading.get_native_id)
        row = await (await db.execute("SELECT outbox_thread()")).fetchone()
        self._writer_tid = int(row[0]) if row else None
        await db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # only a new file takes it
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA synchronous={'FULL' if self.config.durability == 'full' else 'NORMAL'}")
        # Checkpoint per 4 MiB of WAL, as schema 1 did with 1000 pages of 4 KiB: with small pages the
        # default would checkpoint (and fsync the database) four times as often under load.
        await db.execute(f"PRAGMA wal_autocheckpoint={4 * 2**20 // PAGE_SIZE}")
        row = await (await db.execute("PRAGMA quick_check")).fetchone()
        if row is None or row[0] != "ok":
            raise _Corrupt(f"quick_check: {row[0] if row else 'no answer'}")
        await self._ensure_media_dir()
        await db.execute(_META)
        version = await self._schema_version()
        if version is None:
            await db.executescript(
                f"BEGIN; {_SCHEMA} INSERT INTO meta (key, value) VALUES ('schema_version', {SCHEMA_VERSION}); COMMIT;"
            )
        elif version == 1:
            await self._migrate_v1()
        elif version != SCHEMA_VERSION:
            raise OutboxError(f"{self.path}: schema version {version} is newer than this software ({SCHEMA_VERSION})")
        await self._repage()
        start = seed_seq if seed_seq is not None else 1
        await db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('next_seq', ?)", (start,))
        self._seq_mark = await self._meta("next_seq") or 1
        self._newest = await self._newest_position()
        self._next_seq = max(self._seq_mark, (self._newest & _SEQ_MASK) + 1)
        async with db.execute("SELECT priority, count(*), total(size) FROM events GROUP BY priority") as cur:
            async for prio, n, size in cur:
                self._count[Priority(prio)] = n
                self._bytes[Priority(prio)] = int(size)
        async with db.execute("SELECT media FROM events WHERE media IS NOT NULL") as cur:
            async for (refs,) in cur:
                for sha in refs.split():
                    self._media_refs[sha] = self._media_refs.get(sha, 0) + 1
        self._media_sizes = await asyncio.to_thread(_remove_orphans, self.media_dir, self._media_refs)
        self._reader = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True)
        await self._reader.execute("PRAGMA query_only=ON")

    async def _ensure_media_dir(self) -> None:
        if not self.media_dir.is_dir():
            self.media_dir.mkdir(mode=DIR_MODE)
            os.chmod(self.media_dir, DIR_MODE)  # mkdir's mode went through the umask
            await asyncio.to_thread(_fsync_dir, self.media_dir.parent)

    async def _schema_version(self) -> int | None:
        """The file's schema version; None for a new file."""
        assert self._db is not None
        version = await self._meta("schema_version")
        if version is not None:
            return version
        # Version 1 created its tables before recording its version: a crash in between left no record.
        tables = await self._db.execute_fetchall("SELECT 1 FROM sqlite_schema WHERE name = 'events'")
        return 1 if tables else None

    async def _migrate_v1(self) -> None:
        """Schema 1 to 2: JPEGs out to files, events re-keyed by (priority, seq), indexes dropped.

        The files are written before the transaction that drops their table: a crash in
        between leaves version 1 intact, and the migration runs again.
        """
        assert self._db is not None
        started = time.monotonic()
        files = 0
        async with self._db.execute("SELECT sha256, data FROM media") as cur:
            async for sha, data in cur:
                await self._write_media({sha: bytes(data)})
                files += 1
        await self._db.executescript(f"BEGIN IMMEDIATE; {_MIGRATE_V1} COMMIT;")
        log.info("outbox_migrated", to=SCHEMA_VERSION, media_files=files, seconds=round(time.monotonic() - started, 1))

    async def _repage(self) -> None:
        """Rewrite a small file made with other pages (schema 1 used 4 KiB) with PAGE_SIZE ones.

        A large one (an outage's backlog) keeps its pages: rewriting it would hold up the
        start, and it is done at a later open, once the backlog has drained.
        """
        assert self._db is not None
        db = self._db
        row = await (await db.execute("PRAGMA page_size")).fetchone()
        pages = await (await db.execute("PRAGMA page_count")).fetchone()
        if row is None or pages is None or row[0] == PAGE_SIZE or row[0] * pages[0] > _REPAGE_MAX_BYTES:
            return
        try:
            # The page size of a WAL file cannot change: VACUUM it in rollback mode.
            await db.execute("PRAGMA journal_mode=DELETE")
            await db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            await db.execute("VACUUM")
        except sqlite3.Error as exc:
            log.warning("outbox_repage_failed", page_size=row[0], error=str(exc))
        finally:
            await db.execute("PRAGMA journal_mode=WAL")

    async def _meta(self, key: str) -> int | None:
        assert self._db is not None
        row = await (await self._db.execute("SELECT value FROM meta WHERE key = ?", (key,))).fetchone()
        return None if row is None else int(row[0])

    async def _newest_position(self) -> int:
        """Position of the event with the highest seq, 0 if there is none: the newest row of some priority."""
        assert self._db is not None
        newest = 0
        for prio in Priority:
            row = await (
                await self._db.execute(
                    "SELECT pos FROM events WHERE pos >= ? AND pos < ? ORDER BY pos DESC LIMIT 1", _range(prio)
                )
            ).fetchone()
            if row is not None and row[0] & _SEQ_MASK > newest & _SEQ_MASK:
                newest = row[0]
        return newest

    async def _close_quietly(self) -> int:
        """Close a connection to a broken file, keeping its sequence high-water mark if readable."""
        salvaged: int | None = None
        if self._db is not None:
            with contextlib.suppress(Exception):
                mark = await self._meta("next_seq") or 1
                newest = await self._newest_position()
                salvaged = max(mark, (newest & _SEQ_MASK) + 1)
            self._count_writer_thread()
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
        # The JPEGs go with the file that references them: a fresh file would see them as orphans.
        for suffix in ("-wal", "-shm", ".media"):
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                os.replace(side, Path(f"{aside}{suffix}"))
        return aside

    # ------------------------------------------------------------------ put

    async def put(self, event: NewEvent) -> Accepted:
        """Return once ``event`` is committed; raise an :class:`OutboxError` if it cannot be.

        It may wait up to ``commit_interval_ms`` for others to share the commit; cancelled
        while it waits, the event is withdrawn (cancelled once its commit has begun, it is stored).
        """
        return await self._enqueue(self._check(_encode(event)))

    async def put_many(self, events: list[NewEvent]) -> list[Accepted]:
        """Commit several events; each one's receipt, in order. They may share transactions.

        All are validated first: one bad event fails the call before any is queued.
        """
        pendings = [self._check(_encode(e)) for e in events]
        return list(await asyncio.gather(*[self._enqueue(p) for p in pendings]))

    def _check_open(self) -> None:
        if self._closing:
            raise OutboxError("outbox is closing")
        if self._writer is not None and self._writer.done():
            raise OutboxError("outbox writer has stopped")

    def _check(self, pending: _Pending) -> _Pending:
        self._check_open()
        if pending.size > self.config.max_event_bytes:
            raise EventTooLarge(
                f"event of {pending.size} bytes exceeds outbox.max_event_bytes={self.config.max_event_bytes}"
            )
        return pending

    def _enqueue(self, pending: _Pending) -> asyncio.Future[Accepted]:
        loop = asyncio.get_running_loop()
        pending.future = loop.create_future()
        if not self._pending:
            self._gathering_since = loop.time()
        self._pending.append(pending)
        if pending.priority is Priority.ALERT and self.config.commit_alerts_at_once:
            self._urgent = True
        self._wake.set()
        return pending.future

    def _busy(self, now: float) -> bool:
        """Whether what waits comes so fast that waiting for the window would only add latency.

        That is when ``commit_at_once_events`` puts came within an eighth of the window (with
        the defaults, a rate of 256 a second, thirteen times a pole's): a crowd of producers
        each awaiting its put, or a big ``put_many``, whose groups are big without the window.
        A steady trickle, even at several times a pole's rate, fills one commit per window.
        """
        if self._ack_ids >= _ACKS_AT_ONCE:
            return True
        return (
            len(self._pending) >= self.config.commit_at_once_events
            and now - self._gathering_since <= self.config.commit_interval_ms / 8000
        )

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.last_progress = time.monotonic()
            if not self._pending and not self._acks:
                if self._closing:
                    await self._idle.wait()
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._lock.locked():
                async with self._lock:  # let a reject or expiry through, then carry on
                    continue
            if self._inflight >= _MAX_INFLIGHT:
                self._slot.clear()
                await self._slot.wait()
                continue
            now = loop.time()
            busy = self._busy(now)
            if not (busy or self._urgent or self._closing or now >= self._window_ends):
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(self._window_ends):
                        await self._wake.wait()
                continue
            self._window_ends = now + self.config.commit_interval_ms / 1000
            self._gathering_since = now  # for what is left behind, and what comes next
            take = len(self._pending)
            if busy and not self._inflight and take >= _SPLIT_AT:
                # An idle connection and a crowd of producers: send half now and
                # half right behind it, so one half's producers make their next
                # events while the other half is being written.
                take = (take + 1) // 2
            group = self._pending[: min(take, self.config.group_max_events)]
            del self._pending[: len(group)]
            if not self._pending:
                self._urgent = False
            # A put cancelled while it waited (a producer shutting down) is withdrawn, not committed
            # behind its back; once its group is on its way it commits all the same.
            group = [p for p in group if not p.future.cancelled()]
            acks, self._acks, self._ack_ids = self._acks, [], 0
            if not group and not acks:
                continue
            try:
                if acks or self._needs_transaction(group):
                    await self._commit_slow(group, acks)
                else:
                    self._dispatch_fast(group)
            except Exception as exc:  # the writer must outlive any one bad group
                log.exception("outbox_group_failed", events=len(group), acks=len(acks))
                error = _commit_error(exc)
                for waiter in [p.future for p in group] + [a.future for a in acks]:
                    if not waiter.done():
                        waiter.set_exception(error)

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
        self._newest = params[-5]
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
                if not p.future.done():  # a put cancelled after its group left still committed its event
                    p.future.set_result(Accepted(p.id, seq0 + i))
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()
            self._slot.set()

    async def _commit_slow(self, group: list[_Pending], acks: list[_Acks]) -> None:
        """Commit acknowledgements and a group that carries media or needs room, in one explicit transaction."""
        removed: set[str] = set()
        refused: list[_Pending] = []
        seq0 = 0
        try:
            async with self._transaction() as tx:
                if acks:
                    removed = await self._delete_ids(tx, [i for a in acks for i in a.ids])
                plan, refused = self._plan_room(group, tx.freed)
                if refused:
                    group = [p for p in group if p not in refused]
                if plan:
                    await self._evict(tx, plan)
                seq0 = self._next_seq
                self._next_seq += len(group)
                now = time.time()
                await self._store_media(tx, group)
                rows = [p.row(seq0 + i, now) for i, p in enumerate(group)]
                if rows:
                    if len(rows) <= _FAST_MAX_ROWS:
                        await tx.db.execute(_insert_rows_sql(len(rows)), [v for r in rows for v in r])
                    else:
                        await tx.db.executemany(_INSERT_EVENT, rows)
                    tx.inserted = rows[-1][0]
        except Exception as exc:
            error = _commit_error(exc)
            log.error("outbox_commit_failed", error=str(exc), events=len(group), acks=len(acks))
            for waiter in [p.future for p in group + refused] + [a.future for a in acks]:
                if not waiter.done():
                    waiter.set_exception(error)
            return
        self._account(group, +1)
        self.commits += 1
        if group:
            self._new.set()
        for a in acks:
            if not a.future.done():
                a.future.set_result(sum(1 for i in set(a.ids) if i in removed))
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

    async def _store_media(self, tx: _Tx, group: list[_Pending]) -> None:
        """Write the group's JPEGs that no committed row holds yet, before the rows that reference them commit."""
        blobs: dict[str, bytes] = {}
        for p in group:
            for sha, data in p.media:
                tx.added.append(sha)
                if sha not in self._media_refs:
                    blobs[sha] = data
        if blobs:
            tx.new_files.update((sha, len(data)) for sha, data in blobs.items())
            await self._write_media(blobs)

    async def _write_media(self, blobs: dict[str, bytes]) -> None:
        written = await asyncio.to_thread(_write_files, self.media_dir, blobs)
        if written is None:
            self._written_counted = False
        else:
            self._written_before += written

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Tx]:
        """An explicit write transaction, alone on the connection.

        If it deletes the newest event and inserts none, it records the seq
        high-water mark, so a restart can never hand out that seq again. What it
        changes beyond the file (counts, media files) is applied once it has committed.
        """
        assert self._db is not None
        db = self._db
        async with self._lock:
            await self._idle.wait()
            tx = _Tx(db)
            try:
                await db.execute("BEGIN IMMEDIATE")
                yield tx
                if tx.freed and not tx.inserted:
                    await self._keep_seq_mark(tx)
                await db.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back (it does on SQLITE_FULL); keep the first error.
                await rollback(db)
                unused = [sha for sha in tx.new_files if sha not in self._media_refs]
                if unused:
                    await asyncio.to_thread(_remove_files, self.media_dir, unused)
                raise
            if tx.inserted:
                self._newest = tx.inserted
            if tx.seq_mark:
                self._seq_mark = tx.seq_mark
            self._forget(tx.freed)
            await self._apply_media(tx)

    async def _keep_seq_mark(self, tx: _Tx) -> None:
        if self._seq_mark >= self._next_seq:
            return
        if self._newest:
            row = await (await tx.db.execute("SELECT 1 FROM events WHERE pos = ?", (self._newest,))).fetchone()
            if row is not None:
                return  # the newest event is still there: the table holds the mark
        await tx.db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (self._next_seq,))
        tx.seq_mark = self._next_seq

    async def _apply_media(self, tx: _Tx) -> None:
        refs = self._media_refs
        self._media_sizes.update(tx.new_files)
        for sha in tx.added:
            refs[sha] = refs.get(sha, 0) + 1
        gone = []
        for sha in tx.released:
            left = refs.get(sha, 0) - 1
            if left > 0:
                refs[sha] = left
            else:
                refs.pop(sha, None)
                self._media_sizes.pop(sha, None)
                gone.append(sha)
        if gone:
            await asyncio.to_thread(_remove_files, self.media_dir, gone)

    def _account(self, group: list[_Pending], sign: int) -> None:
        for p in group:
            self._count[p.priority] += sign
            self._bytes[p.priority] += sign * p.size

    def _forget(self, freed: list[tuple[Priority, int]]) -> None:
        for prio, size in freed:
            self._count[prio] -= 1
            self._bytes[prio] -= size

    def _plan_room(
        self, group: list[_Pending], freed: list[tuple[Priority, int]]
    ) -> tuple[dict[Priority, int], list[_Pending]]:
        """Decide what to evict so the group fits the cap, and which of it cannot fit.

        ``freed`` is what the transaction already deleted. An event may displace only
        events of its own or lower importance, least important and oldest first, so
        alerts go last and never make way for media.
        """
        evictable = dict(self._bytes)
        for prio, size in freed:
            evictable[prio] -= size
        free = self.config.max_bytes - sum(evictable.values())
        if sum(p.size for p in group) <= free:
            return {}, []
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

    async def _evict(self, tx: _Tx, plan: dict[Priority, int]) -> None:
        """Delete the oldest events of each priority until ``plan[priority]`` bytes are free."""
        for prio, want in sorted(plan.items(), reverse=True):
            low, high = _range(prio)
            cutoff = await (await tx.db.execute(_EVICTION_CUTOFF, (low, high, want))).fetchone()
            end = high - 1 if cutoff is None else cutoff[0]
            removed = await self._delete(tx, "DELETE FROM events WHERE pos >= ? AND pos <= ?", (low, end))
            if removed:
                await tx.db.execute(_COUNT, (f"cap:{prio.label}", len(removed)))
                log.warning("outbox_evicted", priority=prio.label, events=len(removed), reason="cap")

    async def _delete(self, tx: _Tx, sql: str, params: tuple[object, ...]) -> list[str]:
        """Run a ``DELETE``, noting what it frees for after the commit; returns the ids deleted."""
        rows = await tx.db.execute_fetchall(sql + _RETURNING, params)
        for _, prio, size, media in rows:
            tx.freed.append((Priority(prio), size))
            if media:
                tx.released.extend(media.split())
        return [id_ for id_, _, _, _ in rows]

    async def _delete_ids(self, tx: _Tx, ids: list[str]) -> set[str]:
        """Delete events by id: by the position next_batch handed out, else by a scan. Returns those deleted."""
        known: list[int] = []
        unknown: list[str] = []
        for id_ in ids:
            pos = self._sent.pop(id_, None)
            if pos is None:
                unknown.append(id_)
            else:
                known.append(pos)
        removed: list[str] = []
        if known:
            removed += await self._delete(
                tx, "DELETE FROM events WHERE pos IN (SELECT value FROM json_each(?))", (orjson.dumps(known).decode(),)
            )
        if unknown:
            removed += await self._delete(
                tx, "DELETE FROM events WHERE id IN (SELECT value FROM json_each(?))", (orjson.dumps(unknown).decode(),)
            )
        return set(removed)

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
        sql = "SELECT pos, id, seq, priority, body, media FROM events"
        params: list[object] = []
        if exclude_seqs:
            # Checked on each row as the table is walked in order, before its body is decoded.
            sql += " WHERE seq NOT IN (SELECT value FROM json_each(?))"
            params.append(orjson.dumps(list(exclude_seqs)).decode())
        rows = await self._reader.execute_fetchall(f"{sql} ORDER BY pos LIMIT ?", (*params, max_events))
        out: list[OutboxRecord] = []
        total = 0
        priorities = list(Priority)
        sent = self._sent
        for pos, id_, seq, prio, body, media in rows:
            total += len(body)
            if out and total > max_bytes:
                break
            out.append(OutboxRecord(id_, seq, priorities[prio], body, tuple(media.split()) if media else ()))
            sent[id_] = pos
        if len(sent) > _SENT_KEEP:
            # Ids handed out and never settled (evicted, or a consumer that gave up): forget the oldest.
            for id_ in list(sent)[: len(sent) - _SENT_KEEP // 2]:
                del sent[id_]
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
        # Only names this outbox holds: the receiver chooses what it asks for.
        if not _SHA256.fullmatch(sha256) or sha256 not in self._media_refs:
            return None
        return await asyncio.to_thread(_read_file, self.media_dir / sha256)

    async def ack(self, ids: list[str]) -> int:
        """Remove delivered events; unknown ids are ignored. Returns how many were removed.

        The deletion shares the commit window with puts: it returns once committed,
        which may be up to ``commit_interval_ms`` later (at once for many ids).
        """
        if not ids:
            return 0
        self._check_open()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._acks.append(_Acks(list(ids), future))
        self._ack_ids += len(ids)
        self._wake.set()
        return await future

    async def reject(self, id: str, reason: str) -> bool:
        """Move one event to the dead letters with the receiver's reason; False if it is not queued."""
        return await self.reject_many({id: reason}) == 1

    async def reject_many(self, reasons: dict[str, str]) -> int:
        """Move events to the dead letters, each with its reason; the queue moves on without them."""
        if not reasons:
            return 0
        now = time.time()
        moved = 0
        async with self._transaction() as tx:
            for id_, reason in reasons.items():
                pos = self._sent.pop(id_, None)
                where, key = ("pos = ?", pos) if pos is not None else ("id = ?", id_)
                await tx.db.execute(
                    "INSERT OR REPLACE INTO dead_letters (id, seq, priority, type, body, reason, rejected_at)"
                    f" SELECT id, seq, priority, type, body, ?, ? FROM events WHERE {where}",
                    (reason[:2000], now, key),
                )
                moved += len(await self._delete(tx, f"DELETE FROM events WHERE {where}", (key,)))
            await tx.db.execute(
                "DELETE FROM dead_letters WHERE id NOT IN"
                " (SELECT id FROM dead_letters ORDER BY rejected_at DESC, seq DESC LIMIT ?)",
                (self.config.dead_letters_keep,),
            )
        if moved:
            log.warning("outbox_dead_lettered", events=moved, reasons=sorted(set(reasons.values()))[:5])
        return moved

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
        async with self._transaction() as tx:
            for prio in Priority:
                ttl = self.config.ttl_seconds.for_priority(prio)
                if ttl <= 0 or not self._count[prio]:
                    continue
                low, high = _range(prio)
                removed = await self._delete(
                    tx, "DELETE FROM events WHERE pos >= ? AND pos < ? AND created < ?", (low, high, now - ttl)
                )
                if removed:
                    counts[f"ttl:{prio.label}"] = len(removed)
                    await tx.db.execute(_COUNT, (f"ttl:{prio.label}", len(removed)))
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

    @property
    def written_bytes(self) -> int | None:
        """Bytes the outbox has sent to the block device since it was opened; None where Linux does not count them.

        The kernel's per-thread I/O accounting of the writer connection's thread (WAL
        appends, checkpoints into the database, the migration) plus that of the threads
        that wrote the JPEG files: each 4 KiB page-cache page a write dirties, less what
        was truncated before reaching the disk. The file system's own metadata (the
        ext4 journal) is written by kernel threads and is not in it.
        """
        current = self._writer_thread_written()
        if current is None or not self._written_counted:
            return None
        return self._written_before + current

    def _writer_thread_written(self) -> int | None:
        if self._writer_tid is None:
            return 0
        return _io_written(f"/proc/self/task/{self._writer_tid}/io")

    def _count_writer_thread(self) -> None:
        """Keep what the writer connection's thread wrote before it ends."""
        current = self._writer_thread_written()
        if current is None:
            self._written_counted = False
        else:
            self._written_before += current
        self._writer_tid = None

    def writer_alive(self, within_s: float) -> bool:
        """False if puts are waiting and the writer has not moved for ``within_s`` seconds."""
        waiting = bool(self._pending) or bool(self._acks) or self._inflight > 0
        stuck = time.monotonic() - self.last_progress > within_s
        return not (waiting and stuck) and not (self._writer is not None and self._writer.done())

    async def stats(self) -> OutboxStats:
        assert self._reader is not None
        reader = self._reader
        oldest: float | None = None
        for prio in Priority:
            if self._count[prio]:
                # created follows seq, so the first row of a priority is its oldest.
                low, high = _range(prio)
                row = await (
                    await reader.execute(
                        "SELECT created FROM events WHERE pos >= ? AND pos < ? ORDER BY pos LIMIT 1", (low, high)
                    )
                ).fetchone()
                if row is not None and (oldest is None or row[0] < oldest):
                    oldest = row[0]
        evicted = {str(r): int(n) for r, n in await reader.execute_fetchall("SELECT reason, n FROM counters")}
        dead = await (await reader.execute("SELECT count(*) FROM dead_letters")).fetchone()
        pages = await (await reader.execute("PRAGMA page_count")).fetchone()
        page_size = await (await reader.execute("PRAGMA page_size")).fetchone()
        return OutboxStats(
            depth={p.label: self._count[p] for p in Priority},
            bytes_by_priority={p.label: self._bytes[p] for p in Priority},
            bytes_used=self.bytes_used,
            max_bytes=self.config.max_bytes,
            oldest_age_s=None if oldest is None else max(0.0, time.time() - oldest),
            evicted=evicted,
            dead_letters=int(dead[0]) if dead else 0,
            file_bytes=(int(pages[0]) * int(page_size[0]) if pages and page_size else 0)
            + sum(self._media_sizes.values()),
            next_seq=self._next_seq,
            durability=self.config.durability,
            written_bytes=self.written_bytes,
        )

    # ------------------------------------------------------------------ close

    async def close(self) -> None:
        """Commit everything already handed to ``put`` and ``ack``, then close the file."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
        if self._expirer is not None:
            self._expirer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expirer
        if self._reader is not None:
            await self._reader.close()
        if self._db is not None:
            # Checkpoint while the writer's thread can still be counted; closing has nothing left to write.
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._count_writer_thread()
            await self._db.close()
        self._reader = self._db = None
