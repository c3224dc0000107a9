"""The outbox on real SQLite files: group commit by load and by time, ordering, ack/reject, cap, TTL,
corruption, disk full, media files, the migration from schema 1 and the count of bytes written."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sync.events import Location, NewEvent, Priority
from sync.outbox import (
    PAGE_SIZE,
    SCHEMA_VERSION,
    EventTooLarge,
    Outbox,
    OutboxConfig,
    OutboxDiskFull,
    OutboxError,
    OutboxFull,
    TtlConfig,
)
from tests.conftest import DATA, ROOT


def now(**settings: object) -> OutboxConfig:
    """A config without the commit window, for tests of everything else: one awaited put is one commit."""
    return OutboxConfig.model_validate({"commit_interval_ms": 0, **settings})


def ev(i: int = 0, priority: Priority = Priority.EVENT, pad: int = 0, media: tuple[bytes, ...] = ()) -> NewEvent:
    """A test event; with ``pad`` set, every event has the same size whatever its priority."""
    filler = "x" * max(0, pad - len(priority.label) - len(str(i)))
    return NewEvent(type="test", data={"i": i, "pad": filler}, priority=priority, media=media, ts=1.7e9)


@pytest.fixture
async def outbox(tmp_path: Path):
    box = await Outbox.open(tmp_path / "outbox.db", now())
    yield box
    await box.close()


async def test_put_returns_after_commit_and_survives_reopen(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", now())
    got = await box.put(NewEvent("presence", {"people": 3}, location=Location(52.1, 4.3, "gps")))
    await box.close()

    # Read with plain sqlite3: the row is on disk, not just in our memory.
    con = sqlite3.connect(tmp_path / "o.db")
    (body,) = con.execute("SELECT body FROM events WHERE id = ?", (got.id,)).fetchone()
    con.close()
    assert f'"id":"{got.id}"' in body and f'"seq":{got.seq}' in body
    assert '"location":{"lat":52.1,"lon":4.3,"source":"gps"}' in body

    box = await Outbox.open(tmp_path / "o.db", now())
    (record,) = await box.next_batch(10, 10**6)
    assert record.id == got.id and record.seq == got.seq
    await box.close()


async def test_ids_are_uuid7_and_seq_increases_across_restarts(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", now())
    first = [await box.put(ev(i)) for i in range(5)]
    await box.ack([a.id for a in first])  # the high-water mark must survive an empty table
    await box.close()
    box = await Outbox.open(tmp_path / "o.db", now())
    later = await box.put(ev(9))
    await box.close()
    assert later.seq > max(a.seq for a in first)
    assert all(a.id[14] == "7" for a in first + [later]), "UUID version nibble must be 7"
    assert len({a.id for a in first}) == 5


async def test_group_commit_under_100_concurrent_producers(tmp_path: Path) -> None:
    # The default one-second window: so many producers are load, and commit without waiting for it.
    box = await Outbox.open(tmp_path / "o.db")
    started = time.monotonic()
    per = 20

    async def producer(k: int) -> list:
        return [await box.put(ev(k * per + i)) for i in range(per)]

    results = await asyncio.gather(*(producer(k) for k in range(100)))
    elapsed = time.monotonic() - started
    receipts = [r for rs in results for r in rs]
    commits = box.commits
    await box.close()
    assert elapsed < 5, f"20 rounds of puts took {elapsed:.1f} s: the window held up a loaded outbox"

    assert len(receipts) == 2000
    assert len({r.seq for r in receipts}) == 2000 and len({r.id for r in receipts}) == 2000
    # Concurrent puts share transactions: far fewer commits than events.
    assert commits < 2000 / 5, commits
    # Each producer saw its own puts committed in order.
    for rs in results:
        assert [r.seq for r in rs] == sorted(r.seq for r in rs)
    con = sqlite3.connect(tmp_path / "o.db")
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 2000
    con.close()


async def test_put_many(outbox: Outbox) -> None:
    receipts = await outbox.put_many([ev(i) for i in range(1500)])
    assert [r.seq for r in receipts] == sorted(r.seq for r in receipts)
    assert outbox.backlog == 1500


async def test_bad_event_fails_alone(outbox: Outbox) -> None:
    good = asyncio.ensure_future(outbox.put(ev(1)))
    with pytest.raises(ValueError, match="JSON"):
        await outbox.put(NewEvent("test", {"x": object()}))
    with pytest.raises(ValueError, match="priority"):
        await outbox.put(NewEvent("test", {}, priority="urgent"))  # type: ignore[arg-type]
    assert (await good).seq >= 1
    assert outbox.backlog == 1


async def test_next_batch_priority_then_seq_and_limits(outbox: Outbox) -> None:
    order = [Priority.MEDIA, Priority.TELEMETRY, Priority.ALERT, Priority.EVENT, Priority.ALERT, Priority.MEDIA]
    receipts = [await outbox.put(ev(i, p)) for i, p in enumerate(order)]
    batch = await outbox.next_batch(100, 10**6)
    got = [(r.priority, r.seq) for r in batch]
    assert got == sorted(got)
    assert [r.priority for r in batch] == sorted(order)
    assert {r.id for r in batch} == {a.id for a in receipts}

    assert len(await outbox.next_batch(2, 10**6)) == 2
    one_size = len(batch[0].body)
    assert len(await outbox.next_batch(100, one_size * 2 + 1)) == 2
    # An event larger than max_bytes still goes, alone, so it cannot block the queue.
    assert len(await outbox.next_batch(100, 1)) == 1


async def test_ack_and_reject_move_the_queue(outbox: Outbox) -> None:
    a, b, c = [await outbox.put(ev(i)) for i in range(3)]
    assert await outbox.ack([a.id, "not-an-id"]) == 1
    assert await outbox.reject(b.id, "data.speed: must be a number")
    assert not await outbox.reject(b.id, "again")
    batch = await outbox.next_batch(10, 10**6)
    assert [r.id for r in batch] == [c.id]
    (dead,) = await outbox.dead_letters()
    assert dead.id == b.id and dead.reason == "data.speed: must be a number" and dead.seq == b.seq
    stats = await outbox.stats()
    assert stats.dead_letters == 1 and stats.depth["event"] == 1


async def test_dead_letters_are_bounded(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", now(dead_letters_keep=3))
    receipts = [await box.put(ev(i)) for i in range(5)]
    await box.reject_many({r.id: f"bad {i}" for i, r in enumerate(receipts)})
    dead = await box.dead_letters()
    await box.close()
    assert len(dead) == 3


async def test_media_is_stored_by_sha256_and_released(outbox: Outbox) -> None:
    jpeg = b"\xff\xd8fake-jpeg\xff\xd9"
    sha = hashlib.sha256(jpeg).hexdigest()
    a = await outbox.put(ev(1, Priority.MEDIA, media=(jpeg,)))
    b = await outbox.put(ev(2, Priority.MEDIA, media=(jpeg,)))
    held = (await outbox.stats()).file_bytes
    (rec, _) = await outbox.next_batch(10, 10**6)
    assert rec.media == (sha,) and f'"media":["{sha}"]' in rec.body
    assert await outbox.media(sha) == jpeg
    await outbox.ack([a.id])
    assert await outbox.media(sha) == jpeg, "still referenced by the second event"
    await outbox.ack([b.id])
    assert await outbox.media(sha) is None
    assert not (outbox.media_dir / sha).exists(), "the file goes with the last event that references it"
    assert (await outbox.stats()).file_bytes == held - len(jpeg), "file_bytes counts the JPEG files, once each"
    assert await outbox.media("../outbox.db") is None, "only the JPEGs it holds, by their sha256"


async def test_eviction_order_at_the_cap(tmp_path: Path) -> None:
    probe = await Outbox.open(tmp_path / "probe.db", now())
    await probe.put(ev(0, Priority.ALERT, pad=900))
    size = probe.bytes_used  # every event below has this size
    await probe.close()
    box = await Outbox.open(tmp_path / "o.db", now(max_bytes=16 * size))
    kinds = {}
    for i in range(4):
        for p in (Priority.ALERT, Priority.EVENT, Priority.TELEMETRY, Priority.MEDIA):
            kinds[(await box.put(ev(i, p, pad=900))).id] = (p, i)
    assert box.bytes_used == 16 * size
    before = {p.label: n for p, n in zip(Priority, (4, 4, 4, 4), strict=True)}
    assert (await box.stats()).depth == before

    # Each new alert of ~1 KB must push out the oldest media first, then telemetry...
    for i in range(4, 12):
        await box.put(ev(i, Priority.ALERT, pad=900))
    stats = await box.stats()
    assert box.bytes_used == 16 * size
    assert stats.depth["media"] == 0 and stats.depth["telemetry"] == 0
    assert stats.depth["alert"] == 12 and stats.depth["event"] == 4
    assert stats.evicted == {"cap:media": 4, "cap:telemetry": 4}

    await box.put(ev(99, Priority.EVENT, pad=900))
    remaining = {r.id for r in await box.next_batch(100, 10**7)}
    survivors = sorted(kinds[i][1] for i in remaining if i in kinds and kinds[i][0] == Priority.EVENT)
    assert survivors == [1, 2, 3], "the oldest event went first"

    # Alerts never make way for anything less important.
    with pytest.raises(OutboxFull):
        for _ in range(20):
            await box.put(ev(0, Priority.MEDIA, pad=900))
    assert (await box.stats()).depth["alert"] == 12
    await box.close()


async def test_alerts_evict_alerts_only_when_nothing_lower_remains(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", now(max_bytes=4_500))
    first = await box.put(ev(0, Priority.ALERT, pad=900))
    await box.put(ev(1, Priority.TELEMETRY, pad=900))
    for i in range(2, 6):
        await box.put(ev(i, Priority.ALERT, pad=900))
    stats = await box.stats()
    assert stats.depth["telemetry"] == 0
    assert stats.evicted.get("cap:alert", 0) >= 1
    assert first.id not in {r.id for r in await box.next_batch(100, 10**7)}
    await box.close()


async def test_event_larger_than_limit_is_refused(outbox: Outbox) -> None:
    with pytest.raises(EventTooLarge, match="max_event_bytes"):
        await outbox.put(ev(0, media=(b"x" * 5_000_000,)))


async def test_ttl_expiry_per_priority(tmp_path: Path) -> None:
    ttl = TtlConfig(alert=0, event=100, telemetry=10, media=1)
    box = await Outbox.open(tmp_path / "o.db", now(ttl_seconds=ttl))
    for p in Priority:
        await box.put(ev(0, p))
    assert await box.expire(now=time.time() + 0.5) == {}
    assert await box.expire(now=time.time() + 50) == {"ttl:telemetry": 1, "ttl:media": 1}
    assert await box.expire(now=time.time() + 10**7) == {"ttl:event": 1}
    stats = await box.stats()
    assert stats.depth == {"alert": 1, "event": 0, "telemetry": 0, "media": 0}
    assert stats.evicted == {"ttl:event": 1, "ttl:media": 1, "ttl:telemetry": 1}
    await box.close()


async def test_stats(outbox: Outbox) -> None:
    await outbox.put(ev(1, Priority.TELEMETRY))
    await asyncio.sleep(0.05)
    stats = await outbox.stats()
    assert stats.depth["telemetry"] == 1
    assert stats.bytes_used > 0 and stats.bytes_by_priority["telemetry"] == stats.bytes_used
    assert stats.oldest_age_s is not None and stats.oldest_age_s >= 0.04
    assert stats.file_bytes > 0 and stats.durability == "full"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
async def test_corrupt_file_is_moved_aside(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "o.db"
    if damage == "garbage":
        path.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
        old_top = 0
    else:
        box = await Outbox.open(path, now(durability="normal"))
        await box.put_many([ev(i, pad=400) for i in range(3000)])
        await box.put(ev(0, Priority.MEDIA, media=(b"\xff\xd8evidence\xff\xd9",)))
        old_top = (await box.stats()).next_seq
        await box.close()
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 3])
    damaged = path.read_bytes()

    box = await Outbox.open(path, now())
    try:
        assert box.recovered_from is not None
        assert box.recovered_from.name.startswith("o.db.corrupt-")
        assert box.recovered_from.read_bytes() == damaged, "moved aside intact, never deleted"
        if damage == "truncated":
            (jpeg,) = Path(f"{box.recovered_from}.media").iterdir()
            assert jpeg.read_bytes() == b"\xff\xd8evidence\xff\xd9", "its JPEGs go aside with it"
        fresh = await box.put(ev(1))
        assert fresh.seq >= old_top
        assert [r.id for r in await box.next_batch(10, 10**6)] == [fresh.id]
    finally:
        await box.close()


async def test_disk_full_then_recovers(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", now())
    kept = [await box.put(ev(i)) for i in range(10)]
    # Cap the file at its current size: SQLite then reports SQLITE_FULL as a full disk would.
    pages = (await (await box._db.execute("PRAGMA page_count")).fetchone())[0]
    await box._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(OutboxDiskFull, match="disk full"):
        await box.put_many([ev(i, pad=3000) for i in range(50)])
    with pytest.raises(OutboxDiskFull):
        await box.put(ev(0, pad=3000, media=(b"j" * 100_000,)))
    assert list(box.media_dir.iterdir()) == [], "the JPEG of a row that did not commit is removed"
    assert box.backlog == 10
    await box._db.execute("PRAGMA max_page_count = 1073741823")
    again = await box.put(ev(11))
    await box.close()

    box = await Outbox.open(tmp_path / "o.db", now())
    ids = {r.id for r in await box.next_batch(100, 10**7)}
    await box.close()
    assert ids == {a.id for a in kept} | {again.id}


async def test_close_commits_what_is_in_flight(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", now())
    puts = [asyncio.ensure_future(box.put(ev(i))) for i in range(300)]
    await asyncio.sleep(0)
    await box.close()
    receipts = await asyncio.gather(*puts)
    box = await Outbox.open(tmp_path / "o.db", now())
    assert box.backlog == 300 == len(receipts)
    await box.close()


# ---------------------------------------------------------------------- group commit by time


async def test_puts_within_the_window_share_one_commit(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", OutboxConfig(commit_interval_ms=400))
    try:
        await box.put(ev(0))  # an idle outbox commits the first put at once; the window starts there
        before = box.commits
        puts = []
        for i in range(1, 11):  # a pole's trickle: one put every 20 ms, each awaited by its own task
            puts.append(asyncio.ensure_future(box.put(ev(i))))
            await asyncio.sleep(0.02)
        receipts = await asyncio.gather(*puts)
        assert box.commits == before + 1, "ten puts within one window make one transaction"
        assert [r.seq for r in receipts] == sorted(r.seq for r in receipts)
    finally:
        await box.close()


async def test_put_latency_is_bounded_by_the_window(tmp_path: Path) -> None:
    window = 0.25
    box = await Outbox.open(tmp_path / "o.db", OutboxConfig(commit_interval_ms=int(window * 1000)))
    try:
        latencies = []
        for i in range(6):  # a producer that awaits each put: one commit per window
            started = time.monotonic()
            await box.put(ev(i))
            latencies.append(time.monotonic() - started)
        assert max(latencies) < window + 0.2, latencies
        assert sum(latencies[1:]) > 4 * window * 0.8, f"puts did not wait for the window: {latencies}"
    finally:
        await box.close()


@pytest.mark.parametrize("at_once", [True, False])
async def test_alerts_commit_at_once(tmp_path: Path, at_once: bool) -> None:
    config = OutboxConfig(commit_interval_ms=2000, commit_alerts_at_once=at_once)
    box = await Outbox.open(tmp_path / "o.db", config)
    try:
        await box.put(ev(0))
        waiting = asyncio.ensure_future(box.put(ev(1)))  # within the window: it waits
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await box.put(ev(2, Priority.ALERT))
        elapsed = time.monotonic() - started
        if at_once:
            assert elapsed < 0.5, f"an alert waited {elapsed:.2f} s"
            assert waiting.done(), "what waited rode along with the alert"
            assert box.commits == 2
        else:
            assert elapsed > 1.5, f"the alert did not wait for the window ({elapsed:.2f} s)"
        await waiting
    finally:
        await box.close()


async def test_acknowledgements_share_the_window_with_puts(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", OutboxConfig(commit_interval_ms=300))
    try:
        first = await box.put(ev(0))
        (record,) = await box.next_batch(10, 10**6)
        assert record.id == first.id
        before = box.commits
        acked, second = await asyncio.gather(box.ack([record.id]), box.put(ev(1)))
        assert acked == 1 and box.commits == before + 1, "the deletion and the insert make one transaction"
        assert [r.id for r in await box.next_batch(10, 10**6)] == [second.id]
    finally:
        await box.close()


async def test_load_does_not_wait_for_the_window(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", OutboxConfig(commit_interval_ms=10_000))
    try:
        await box.put(ev(0))
        started = time.monotonic()
        receipts = await box.put_many([ev(i) for i in range(300)])  # past commit_at_once_events
        records = await box.next_batch(1000, 10**7)
        assert await box.ack([r.id for r in records]) == 301  # hundreds of ids: an uplink draining
        assert time.monotonic() - started < 2 and len(receipts) == 300
    finally:
        await box.close()


async def test_a_put_cancelled_while_it_waits_is_withdrawn(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", OutboxConfig(commit_interval_ms=300))
    try:
        await box.put(ev(0))
        cancelled = asyncio.ensure_future(box.put(ev(1)))
        kept = asyncio.ensure_future(box.put(ev(2)))
        await asyncio.sleep(0.05)
        cancelled.cancel()  # a producer shutting down: it will put the event again when it restarts
        receipt = await kept
        assert [r.id for r in await box.next_batch(10, 10**6)][1:] == [receipt.id]
        assert box.backlog == 2
    finally:
        await box.close()


async def test_close_commits_what_waits_in_the_window(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", OutboxConfig(commit_interval_ms=60_000))
    await box.put(ev(0))
    waiting = asyncio.ensure_future(box.put(ev(1)))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await box.close()
    assert time.monotonic() - started < 2 and (await waiting).seq == 2


# ---------------------------------------------------------------------- media files


def media_files(box: Outbox) -> set[str]:
    return {p.name for p in box.media_dir.iterdir()}


async def test_media_file_without_a_committed_row_is_removed_at_open(tmp_path: Path) -> None:
    jpeg = b"\xff\xd8kept\xff\xd9"
    box = await Outbox.open(tmp_path / "o.db", now())
    await box.put(ev(1, Priority.MEDIA, media=(jpeg,)))
    await box.close()
    # What a crash leaves: a file written (even half) whose row never committed, and one whose row was deleted.
    stray = hashlib.sha256(b"never committed").hexdigest()
    (box.media_dir / stray).write_bytes(b"\xff\xd8half")
    box = await Outbox.open(tmp_path / "o.db", now())
    try:
        assert media_files(box) == {hashlib.sha256(jpeg).hexdigest()}
        (record,) = await box.next_batch(10, 10**6)
        assert await box.media(record.media[0]) == jpeg
    finally:
        await box.close()


def test_every_committed_media_row_has_its_file_after_sigkill(tmp_path: Path, child_env: dict[str, str]) -> None:
    db = tmp_path / "outbox.db"
    rng = random.Random(15)
    for _ in range(6):
        child = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/helpers/outbox_writer.py"), str(db), "8"],
            stdout=subprocess.PIPE,
            env=child_env,
            cwd=ROOT,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.4))
        child.send_signal(signal.SIGKILL)
        child.stdout.read()
        child.wait()
        con = sqlite3.connect(db)
        refs = {
            sha for (media,) in con.execute("SELECT media FROM events WHERE media IS NOT NULL") for sha in media.split()
        }
        con.close()
        files = {p.name for p in Path(f"{db}.media").iterdir()}
        assert refs <= files, f"committed rows without their JPEG: {sorted(refs - files)[:3]}"
        for sha in refs:
            assert hashlib.sha256((Path(f"{db}.media") / sha).read_bytes()).hexdigest() == sha
    assert refs, "the writer should have committed media before the kills"


# ---------------------------------------------------------------------- schema


async def test_schema_1_file_is_migrated_with_its_events(tmp_path: Path) -> None:
    # Made by the outbox of schema 1 (see tests/data/PROVENANCE.md): seqs 2-8 put, 8 rejected,
    # 9 put and acknowledged (so only meta remembers it), 1 expired; two JPEGs, one shared.
    path = tmp_path / "outbox.db"
    shutil.copy(DATA / "outbox" / "outbox-v1.db", path)
    con = sqlite3.connect(path)
    old = con.execute("SELECT id, seq, priority, body, media FROM events ORDER BY priority, seq").fetchall()
    blobs = dict(con.execute("SELECT sha256, data FROM media").fetchall())
    (shared,) = con.execute("SELECT sha256 FROM media WHERE refs = 2").fetchone()
    con.close()

    box = await Outbox.open(path, now())
    try:
        records = await box.next_batch(100, 10**7)
        assert [(r.id, r.seq, int(r.priority), r.body) for r in records] == [(i, s, p, b) for i, s, p, b, _ in old]
        assert [" ".join(r.media) or None for r in records] == [m for *_, m in old]
        for sha, data in blobs.items():
            assert await box.media(sha) == data
        stats = await box.stats()
        assert stats.depth == {"alert": 1, "event": 2, "telemetry": 0, "media": 3}
        assert stats.evicted == {"ttl:telemetry": 1} and stats.dead_letters == 1
        assert (await box.dead_letters())[0].reason == "data.i: bad"
        assert (await box.put(ev(1))).seq == 10, "seq goes on from the old high-water mark"
        # The shared JPEG outlives the first of its two events.
        await box.ack([next(r.id for r in records if r.media == (shared,))])
        assert await box.media(shared) == blobs[shared]
    finally:
        await box.close()
    con = sqlite3.connect(path)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (SCHEMA_VERSION,)
    assert con.execute("PRAGMA page_size").fetchone() == (PAGE_SIZE,), "a small file is rewritten with small pages"
    names = {n for (n,) in con.execute("SELECT name FROM sqlite_schema")}
    con.close()
    assert "media" not in names and not {n for n in names if n.startswith("events_")}


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", now())
    await box.close()
    con = sqlite3.connect(tmp_path / "o.db")
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    con.commit()
    con.close()
    before = _connection_threads()
    with pytest.raises(OutboxError, match="newer than this software") as refused:
        await Outbox.open(tmp_path / "o.db", now())
    # While the error is held (its traceback keeps the half-opened outbox alive, as a caller's log may),
    # the connection must already be closed: its thread ends just after close() returns.
    deadline = time.monotonic() + 2
    while _connection_threads() > before and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert _connection_threads() <= before, f"the refused open left its connection open: {refused.value}"


def _connection_threads() -> int:
    return sum(t.is_alive() and "_connection_worker_thread" in t.name for t in threading.enumerate())


# ---------------------------------------------------------------------- bytes written


def process_written() -> int:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["write_bytes"]) - int(fields["cancelled_write_bytes"])


async def test_written_bytes_counts_what_reaches_the_disk(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", now())
    try:
        start = box.written_bytes
        if start is None:
            pytest.skip("this kernel does not count I/O per thread")
        process_start = process_written()
        receipts = [await box.put(ev(i, pad=200)) for i in range(20)]  # 20 commits of one event each
        after_events = box.written_bytes
        assert after_events is not None
        if after_events == start:
            pytest.skip(f"{tmp_path} is on a file system without block I/O (tmpfs)")
        # Each commit appends at least one WAL frame and dirties at least one 4 KiB page of the file.
        assert after_events - start >= 20 * PAGE_SIZE
        assert after_events - start <= 20 * 8 * 4096, "implausibly many pages per one-event commit"

        jpeg = os.urandom(200_000)
        await box.put(ev(99, Priority.MEDIA, media=(jpeg,)))
        after_media = box.written_bytes
        assert after_media is not None and after_media - after_events >= len(jpeg)
        await box.ack([r.id for r in receipts])
        stats = await box.stats()
        assert stats.written_bytes is not None and stats.written_bytes >= after_media
        # Nothing else in this process writes: the outbox's own count is the process's.
        assert abs((stats.written_bytes - start) - (process_written() - process_start)) <= 16 * 4096
    finally:
        await box.close()
