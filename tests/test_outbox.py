"""The outbox on real SQLite files: group commit, ordering, ack/reject, cap, TTL, corruption, disk full."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

from sync.events import Location, NewEvent, Priority
from sync.outbox import (
    EventTooLarge,
    Outbox,
    OutboxConfig,
    OutboxDiskFull,
    OutboxFull,
    TtlConfig,
)


def ev(i: int = 0, priority: Priority = Priority.EVENT, pad: int = 0, media: tuple[bytes, ...] = ()) -> NewEvent:
    """A test event; with ``pad`` set, every event has the same size whatever its priority."""
    filler = "x" * max(0, pad - len(priority.label) - len(str(i)))
    return NewEvent(type="test", data={"i": i, "pad": filler}, priority=priority, media=media, ts=1.7e9)


@pytest.fixture
async def outbox(tmp_path: Path):
    box = await Outbox.open(tmp_path / "outbox.db")
    yield box
    await box.close()


async def test_put_returns_after_commit_and_survives_reopen(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db")
    got = await box.put(NewEvent("presence", {"people": 3}, location=Location(52.1, 4.3, "gps")))
    await box.close()

    # Read with plain sqlite3: the row is on disk, not just in our memory.
    con = sqlite3.connect(tmp_path / "o.db")
    (body,) = con.execute("SELECT body FROM events WHERE id = ?", (got.id,)).fetchone()
    con.close()
    assert f'"id":"{got.id}"' in body and f'"seq":{got.seq}' in body
    assert '"location":{"lat":52.1,"lon":4.3,"source":"gps"}' in body

    box = await Outbox.open(tmp_path / "o.db")
    (record,) = await box.next_batch(10, 10**6)
    assert record.id == got.id and record.seq == got.seq
    await box.close()


async def test_ids_are_uuid7_and_seq_increases_across_restarts(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db")
    first = [await box.put(ev(i)) for i in range(5)]
    await box.ack([a.id for a in first])  # the high-water mark must survive an empty table
    await box.close()
    box = await Outbox.open(tmp_path / "o.db")
    later = await box.put(ev(9))
    await box.close()
    assert later.seq > max(a.seq for a in first)
    assert all(a.id[14] == "7" for a in first + [later]), "UUID version nibble must be 7"
    assert len({a.id for a in first}) == 5


async def test_group_commit_under_100_concurrent_producers(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db")
    per = 20

    async def producer(k: int) -> list:
        return [await box.put(ev(k * per + i)) for i in range(per)]

    results = await asyncio.gather(*(producer(k) for k in range(100)))
    receipts = [r for rs in results for r in rs]
    commits = box.commits
    await box.close()

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
    box = await Outbox.open(tmp_path / "o.db", OutboxConfig(dead_letters_keep=3))
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
    (rec, _) = await outbox.next_batch(10, 10**6)
    assert rec.media == (sha,) and f'"media":["{sha}"]' in rec.body
    assert await outbox.media(sha) == jpeg
    await outbox.ack([a.id])
    assert await outbox.media(sha) == jpeg, "still referenced by the second event"
    await outbox.ack([b.id])
    assert await outbox.media(sha) is None


async def test_eviction_order_at_the_cap(tmp_path: Path) -> None:
    probe = await Outbox.open(tmp_path / "probe.db")
    await probe.put(ev(0, Priority.ALERT, pad=900))
    size = probe.bytes_used  # every event below has this size
    await probe.close()
    box = await Outbox.open(tmp_path / "o.db", OutboxConfig(max_bytes=16 * size))
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
    box = await Outbox.open(tmp_path / "o.db", OutboxConfig(max_bytes=4_500))
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
    box = await Outbox.open(tmp_path / "o.db", OutboxConfig(ttl_seconds=ttl))
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
        box = await Outbox.open(path, OutboxConfig(durability="normal"))
        await box.put_many([ev(i, pad=400) for i in range(3000)])
        old_top = (await box.stats()).next_seq
        await box.close()
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 3])
    damaged = path.read_bytes()

    box = await Outbox.open(path)
    try:
        assert box.recovered_from is not None
        assert box.recovered_from.name.startswith("o.db.corrupt-")
        assert box.recovered_from.read_bytes() == damaged, "moved aside intact, never deleted"
        fresh = await box.put(ev(1))
        assert fresh.seq >= old_top
        assert [r.id for r in await box.next_batch(10, 10**6)] == [fresh.id]
    finally:
        await box.close()


async def test_disk_full_then_recovers(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db")
    kept = [await box.put(ev(i)) for i in range(10)]
    # Cap the file at its current size: SQLite then reports SQLITE_FULL as a full disk would.
    pages = (await (await box._db.execute("PRAGMA page_count")).fetchone())[0]
    await box._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(OutboxDiskFull, match="disk full"):
        await box.put_many([ev(i, pad=3000) for i in range(50)])
    with pytest.raises(OutboxDiskFull):
        await box.put(ev(0, media=(b"j" * 100_000,)))
    assert box.backlog == 10
    await box._db.execute("PRAGMA max_page_count = 1073741823")
    again = await box.put(ev(11))
    await box.close()

    box = await Outbox.open(tmp_path / "o.db")
    ids = {r.id for r in await box.next_batch(100, 10**7)}
    await box.close()
    assert ids == {a.id for a in kept} | {again.id}


async def test_close_commits_what_is_in_flight(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db")
    puts = [asyncio.ensure_future(box.put(ev(i))) for i in range(300)]
    await asyncio.sleep(0)
    await box.close()
    receipts = await asyncio.gather(*puts)
    box = await Outbox.open(tmp_path / "o.db")
    assert box.backlog == 300 == len(receipts)
    await box.close()
