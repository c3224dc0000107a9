"""Retention and the partitioned events table: expired events removed by type on both backends (dropped
partitions, trimmed ones, never the partition being written), media of expired events deleted once
nothing refers to them, the unique key across partitions with concurrent receivers, migration 7 of a
database holding events in the old layout, one maintainer at a time, and ``smartpole receiver maintain``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from receiver.config import RetentionSection
from receiver.maintenance import maintenance_loop, run_maintenance
from receiver.mediastore.base import object_key
from receiver.mediastore.factory import open_media_store
from receiver.mediastore.local import LocalMediaStore
from receiver.metrics import ReceiverMetrics
from receiver.store import postgres, sqlite
from receiver.store.base import DAY_S, EventQuery, PartitionLayout, RetentionRules, Store
from receiver.store.factory import open_store
from receiver.store.partitions import MAINTENANCE_LOCK, list_partitions
from sync.protocol import WireEvent
from tests.conftest import pg_schema, start_receiver, stop_receiver
from tests.helpers.objectstore import MotoServer
from tests.test_media_checks import real_jpeg
from tests.test_media_s3 import make_bucket, object_keys, s3_section

# A fixed "now" at 06:00 UTC, so which day an event falls on never depends on when the test runs.
NOW = 1_780_000_000.0 - 1_780_000_000.0 % DAY_S + 6 * 3600
POLE = "pole-1"


def wire(ts: float, type_: str, media: list[str] | None = None) -> WireEvent:
    return WireEvent(
        id=str(uuid.uuid4()), seq=1, ts=ts, type=type_, priority="event", data={"t": type_}, media=media or []
    )


async def stored(store: Store) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await store.query_events(EventQuery(after=after, limit=1000))
        out += page.events
        if page.next_cursor is None:
            return out
        after = page.next_cursor


async def put(store: Store, events: list[WireEvent]) -> list[str]:
    return (await store.insert_batch(POLE, str(uuid.uuid4()), events, None, NOW)).accepted


def ids(events: list[dict[str, Any]]) -> set[str]:
    return {e["id"] for e in events}


async def table_names(store: Store) -> set[str]:
    async with store._pool.acquire() as conn:  # type: ignore[attr-defined]
        return {p.name for p in await list_partitions(conn)}


async def test_expired_events_go_by_type_on_both_backends(database_url: str) -> None:
    store = await open_store(database_url)
    try:
        old_telemetry = wire(NOW - 40 * DAY_S, "telemetry")
        old_alert = wire(NOW - 40 * DAY_S, "alert")
        ancient_alert = wire(NOW - 400 * DAY_S, "alert")
        new_telemetry = wire(NOW - 10 * DAY_S, "telemetry")
        kept_forever = wire(NOW - 900 * DAY_S, "count")
        everything = [old_telemetry, old_alert, ancient_alert, new_telemetry, kept_forever]
        assert len(await put(store, everything)) == 5
        rules = RetentionRules(default_days=0, types={"telemetry": 30, "alert": 365})
        report = await store.maintain(rules, PartitionLayout(), NOW)
        assert report.skipped is None
        left = ids(await stored(store))
        assert left == {old_alert.id, new_telemetry.id, kept_forever.id}
        assert report.rows_trimmed + report.rows_dropped == 2
        # A kept event is still a duplicate; an expired one is past retention and would be removed again.
        again = await store.insert_batch(POLE, str(uuid.uuid4()), [old_alert, new_telemetry], None, NOW)
        assert again.duplicates == [old_alert.id, new_telemetry.id] and again.accepted == []
        # Nothing more is expired: a second run removes nothing.
        report = await store.maintain(rules, PartitionLayout(), NOW)
        assert report.rows_trimmed + report.rows_dropped == 0
    finally:
        await store.close()


async def test_postgres_drops_wholly_expired_partitions_and_trims_the_others() -> None:
    async with pg_schema() as url:
        store = await open_store(url)
        try:
            layout = PartitionLayout(days=1, ahead_days=3)
            # Partitions from NOW - 45 days on; then events land in them, not in the default partition.
            report = await store.maintain(RetentionRules(), PartitionLayout(days=1, ahead_days=25), NOW - 20 * DAY_S)
            assert report.partitions_created == 51
            only_telemetry = [wire(NOW - 45 * DAY_S + i, "telemetry") for i in range(5)]
            mixed_telemetry = [wire(NOW - 40 * DAY_S + i, "telemetry") for i in range(5)]
            mixed_alert = wire(NOW - 40 * DAY_S + 10, "alert")
            today = [wire(NOW - 60 + i, "telemetry") for i in range(3)]
            await put(store, [*only_telemetry, *mixed_telemetry, mixed_alert, *today])
            async with store._pool.acquire() as conn:  # type: ignore[attr-defined]
                assert await conn.fetchval("SELECT count(*) FROM events_default") == 0
            before = await table_names(store)
            rules = RetentionRules(default_days=365, types={"telemetry": 30})
            report = await store.maintain(rules, layout, NOW)
            after = await table_names(store)
            # Every partition older than 30 days held telemetry only (or nothing) but one: dropped.
            gone = before - after
            assert "events_p" + _day(NOW - 45 * DAY_S) in gone
            assert "events_p" + _day(NOW - 40 * DAY_S) in after  # the alert keeps it: trimmed instead
            assert report.partitions_dropped == len(gone) and report.rows_dropped == 5
            assert report.rows_trimmed == 5
            assert ids(await stored(store)) == {mixed_alert.id, *(e.id for e in today)}
            async with store._pool.acquire() as conn:  # type: ignore[attr-defined]
                # The keys went with their events, and no partition was left detached.
                assert await conn.fetchval("SELECT count(*) FROM event_keys") == 4
                assert await conn.fetchval("SELECT count(*) FROM pg_class WHERE relname LIKE 'events_expired%'") == 0
        finally:
            await store.close()


def _day(ts: float) -> str:
    import time

    return time.strftime("%Y%m%d", time.gmtime(ts))


async def test_postgres_never_deletes_from_the_partition_being_written() -> None:
    """With weekly partitions and telemetry kept one day, telemetry of three days ago stays until its week is over."""
    async with pg_schema() as url:
        store = await open_store(url)
        try:
            layout = PartitionLayout(days=7, ahead_days=7)
            week_start = NOW - 3.5 * DAY_S
            await store.maintain(RetentionRules(), layout, week_start)
            recent = [wire(NOW - 3 * DAY_S + i, "telemetry") for i in range(3)]
            await put(store, recent)
            rules = RetentionRules(types={"telemetry": 1})
            report = await store.maintain(rules, layout, NOW)
            assert report.rows_trimmed == 0 and report.rows_dropped == 0
            assert ids(await stored(store)) == {e.id for e in recent}
            report = await store.maintain(rules, layout, NOW + 7 * DAY_S)  # the week is over, and a day more
            assert report.partitions_dropped == 1 and report.rows_dropped == 3
            assert await stored(store) == []
        finally:
            await store.close()


async def test_postgres_events_outside_the_partitions_are_kept_and_trimmed_in_the_default() -> None:
    async with pg_schema() as url:
        store = await open_store(url)
        try:
            far_past = wire(NOW - 3000 * DAY_S, "telemetry")
            far_future = wire(NOW + 400 * DAY_S, "telemetry")
            past_count = wire(NOW - 3000 * DAY_S, "count")
            await put(store, [far_past, far_future, past_count])
            report = await store.maintain(RetentionRules(types={"telemetry": 30}), PartitionLayout(), NOW)
            assert report.rows_trimmed == 1
            assert ids(await stored(store)) == {far_future.id, past_count.id}
            async with store._pool.acquire() as conn:  # type: ignore[attr-defined]
                assert await conn.fetchval("SELECT count(*) FROM events_default") == 2
        finally:
            await store.close()


async def test_postgres_new_partitions_take_their_rows_from_the_default() -> None:
    async with pg_schema() as url:
        store = await open_store(url)
        try:
            early = [wire(NOW - 600 + i, "count") for i in range(4)]  # before any partition exists
            await put(store, early)
            report = await store.maintain(RetentionRules(), PartitionLayout(days=1, ahead_days=2), NOW)
            assert report.partitions_created == 5  # two days behind, today, two days ahead
            async with store._pool.acquire() as conn:  # type: ignore[attr-defined]
                assert await conn.fetchval("SELECT count(*) FROM events_default") == 0
                assert await conn.fetchval(f"SELECT count(*) FROM events_p{_day(NOW)}") == 4
            assert [e["id"] for e in await stored(store)] == [e.id for e in early]
            # Created ahead already: the next run creates nothing.
            assert (
                await store.maintain(RetentionRules(), PartitionLayout(days=1, ahead_days=2), NOW)
            ).partitions_created == 0
        finally:
            await store.close()


async def test_postgres_exactly_once_with_concurrent_receivers() -> None:
    async with pg_schema() as url:
        stores = [await open_store(url, 4) for _ in range(3)]
        try:
            await stores[0].maintain(RetentionRules(), PartitionLayout(), NOW)
            events = [wire(NOW - i * 3600.0, "count") for i in range(60)]  # across three partitions
            results = await asyncio.gather(
                *(s.insert_batch(POLE, str(uuid.uuid4()), events, None, NOW) for s in stores for _ in range(3))
            )
            accepted = [i for r in results for i in r.accepted]
            assert sorted(accepted) == sorted(e.id for e in events)
            assert len(await stored(stores[0])) == 60
        finally:
            for s in stores:
                await s.close()


async def test_postgres_one_maintainer_at_a_time() -> None:
    async with pg_schema() as url:
        store = await open_store(url)
        holder = await asyncpg.connect(url)
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", MAINTENANCE_LOCK)
            report = await store.maintain(RetentionRules(), PartitionLayout(), NOW)
            assert report.skipped and report.partitions_created == 0
            await holder.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK)
            assert (await store.maintain(RetentionRules(), PartitionLayout(), NOW)).partitions_created > 0
        finally:
            await holder.close()
            await store.close()


async def test_media_of_expired_events_is_deleted_once_nothing_refers_to_it(database_url: str, tmp_path: Path) -> None:
    store = await open_store(database_url)
    media = LocalMediaStore(tmp_path / "media")
    try:
        shared, alone = (hashlib.sha256(name).hexdigest() for name in (b"shared", b"alone"))
        for sha in (shared, alone):
            await media.put(sha, "image/jpeg", b"\xff\xd8\xff" + sha.encode())
            await store.add_media(sha, 10, POLE, NOW)
        await put(
            store,
            [
                wire(NOW - 40 * DAY_S, "snapshot", [shared, alone]),
                wire(NOW - 40 * DAY_S, "telemetry"),
                wire(NOW - 2 * DAY_S, "snapshot", [shared]),
            ],
        )
        config = RetentionSection(types={"snapshot": 30, "telemetry": 30})
        summary = await run_maintenance(store, media, config, NOW)
        assert summary.media_deleted == 1 and summary.media_failed == 0
        assert summary.rows_trimmed + summary.rows_dropped == 2
        assert not media.path(alone).exists() and not await store.has_media(alone)
        assert media.path(shared).exists() and await store.has_media(shared)
        # The last event referring to it expires: now it goes.
        summary = await run_maintenance(store, media, config, NOW + 30 * DAY_S)
        assert summary.media_deleted == 1 and not media.path(shared).exists()
    finally:
        await store.close()


async def waiting_for_the_store(store: Store, database_url: str, task: asyncio.Future[Any]) -> None:
    """Returns once ``task`` waits for the transaction retention holds (or is done, for the caller's asserts)."""
    async with asyncio.timeout(10):
        if store.backend == "postgresql":
            watcher = await asyncpg.connect(database_url)
            try:
                while not task.done() and await lock_waiters(watcher) < 1:
                    await asyncio.sleep(0.01)
            finally:
                await watcher.close()
        else:
            while not task.done() and not store._lock._waiters:  # type: ignore[attr-defined]
                await asyncio.sleep(0.01)


async def test_an_upload_while_retention_deletes_its_file_stores_it_again(database_url: str, tmp_path: Path) -> None:
    """The pole uploads a file again just as retention forgets it: the upload waits, and the file that retention
    deleted meanwhile is stored again, so the listing the upload leaves has its file."""
    rx = await start_receiver(database_url, tmp_path / "media")
    try:
        token = await rx.add_pole(POLE)
        media = rx.receiver.ctx.media
        body = real_jpeg(7)
        sha = hashlib.sha256(body).hexdigest()
        await media.put(sha, "image/jpeg", body)
        await rx.store.add_media(sha, len(body), POLE, NOW)

        async def upload() -> int:
            async with aiohttp.ClientSession() as http:
                headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"}
                async with http.put(f"{rx.url}/v1/media/{sha}", data=body, headers=headers) as r:
                    return r.status

        uploading: list[asyncio.Task[int]] = []

        async def delete(sha256: str) -> None:
            uploading.append(asyncio.create_task(upload()))
            await waiting_for_the_store(rx.store, database_url, uploading[0])
            await media.delete(sha256)

        assert await rx.store.release_media([sha], delete) == [sha]
        assert await uploading[0] == 201
        assert await rx.store.has_media(sha) and await media.exists(sha, "image/jpeg")
    finally:
        await stop_receiver(rx)


async def test_a_batch_while_retention_deletes_its_file_is_asked_for_it(database_url: str, tmp_path: Path) -> None:
    """A batch referring to a file that retention is forgetting waits, and is told to upload it, rather than
    being told it is stored as it goes."""
    store = await open_store(database_url)
    # SQLite serialises its writes in one process: there the batch goes through the same store.
    ingest = await open_store(database_url) if store.backend == "postgresql" else store
    media = LocalMediaStore(tmp_path / "media")
    try:
        sha = hashlib.sha256(b"about to go").hexdigest()
        await media.put(sha, "image/jpeg", b"\xff\xd8\xff" + sha.encode())
        await store.add_media(sha, 10, POLE, NOW)
        referring = wire(NOW, "snapshot", [sha])
        batches: list[asyncio.Task[Any]] = []

        async def delete(sha256: str) -> None:
            batches.append(asyncio.create_task(ingest.insert_batch(POLE, str(uuid.uuid4()), [referring], None, NOW)))
            await waiting_for_the_store(ingest, database_url, batches[0])
            await media.delete(sha256)

        assert await store.release_media([sha], delete) == [sha]
        result = await batches[0]
        assert result.accepted == [referring.id] and result.missing_media == [sha]
    finally:
        await store.close()
        if ingest is not store:
            await ingest.close()


async def test_delete_media_off_keeps_the_files(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'rx.db'}")
    media = LocalMediaStore(tmp_path / "media")
    try:
        sha = hashlib.sha256(b"x").hexdigest()
        await media.put(sha, "image/jpeg", b"x")
        await store.add_media(sha, 1, POLE, NOW)
        await put(store, [wire(NOW - 40 * DAY_S, "snapshot", [sha])])
        summary = await run_maintenance(store, media, RetentionSection(default_days=30, delete_media=False), NOW)
        assert summary.rows_trimmed == 1 and summary.media_deleted == 0 and media.path(sha).exists()
    finally:
        await store.close()


async def test_the_running_receiver_maintains_periodically(database_url: str, tmp_path: Path) -> None:
    store = await open_store(database_url)
    try:
        first = wire(NOW - 40 * DAY_S, "telemetry")
        await put(store, [first])
        config = RetentionSection(types={"telemetry": 30}, maintenance_interval_s=0.05)
        metrics = ReceiverMetrics()
        task = asyncio.create_task(maintenance_loop(store, LocalMediaStore(tmp_path / "media"), config, metrics))
        try:
            async with asyncio.timeout(10):
                while await stored(store):
                    await asyncio.sleep(0.02)
                await put(store, [wire(NOW - 50 * DAY_S, "telemetry")])  # a late backlog, already expired
                while await stored(store):
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        value = metrics.registry.get_sample_value
        assert value("smartpole_receiver_maintenance_runs_total", {"outcome": "done"}) >= 2
        removed = sum(
            value("smartpole_receiver_retention_events_total", {"how": h}) or 0 for h in ("dropped", "trimmed")
        )
        assert removed == 2
        assert value("smartpole_receiver_maintenance_last_done_timestamp_seconds") > NOW
    finally:
        await store.close()


# ---------------------------------------------------------------------------------------------- migration 7


async def _old_layout(database_url: str, rows: list[tuple[str, str, float, str]]) -> None:
    """A database at schema 4 (migrations 1, 2 and 4 alone) holding ``rows`` (pole, event id, ts, type)."""
    insert = (
        "INSERT INTO events (pole_id, event_id, seq, ts, type, priority, data, media, received_at, batch_id)"
        " VALUES ({}, {}, 1, {}, {}, 'event', '{{}}', '[]', 1.0, 'b')"
    )
    if database_url.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version in (1, 2, 4):
            for statement in sqlite.MIGRATIONS[version]:
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        db.executemany(insert.format("?", "?", "?", "?"), rows)
        db.commit()
        db.close()
        return
    conn: Any = await asyncpg.connect(database_url)
    await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version in (1, 2, 4):
        for statement in postgres.MIGRATIONS[version]:
            await conn.execute(statement)
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
    await conn.executemany(insert.format("$1", "$2::uuid", "$3", "$4"), rows)
    await conn.close()


async def test_migration_7_keeps_old_events_their_cursors_and_their_keys(database_url: str, tmp_path: Path) -> None:
    import time

    now = time.time()
    stamps = [now - 3 * DAY_S, now - 100 * DAY_S, now - 2000 * DAY_S, now + 30 * DAY_S, now - 3 * DAY_S + 1]
    rows = [(POLE, str(uuid.uuid4()), ts, "count") for ts in stamps * 30]
    await _old_layout(database_url, rows)
    rx = await start_receiver(database_url, tmp_path / "media")  # opening the store migrates it
    try:
        await rx.add_pole(POLE)
        reader = await rx.add_reader()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {reader}"}) as http:
            seen: list[str] = []
            cursor: int | None = 0
            while cursor is not None:
                async with http.get(f"{rx.url}/v1/events", params={"limit": 40, "cursor": cursor}) as answer:
                    assert answer.status == 200
                    page = await answer.json()
                seen += [e["id"] for e in page["events"]]
                cursor = page["next_cursor"]
        assert seen == [r[1] for r in rows]  # every event, in the order stored before
        # A cursor taken before the migration (after the 70th event) goes on from there.
        assert [e["id"] for e in (await rx.store.query_events(EventQuery(after=70, limit=5))).events] == [
            r[1] for r in rows[70:75]
        ]
        again = [WireEvent(id=r[1], seq=1, ts=r[2], type="count", priority="event", data={}) for r in rows[:50]]
        result = await rx.store.insert_batch(POLE, str(uuid.uuid4()), again, None, now)
        assert result.accepted == [] and len(result.duplicates) == 50
        fresh = wire(now, "count")
        assert (await rx.store.insert_batch(POLE, str(uuid.uuid4()), [fresh], None, now)).accepted == [fresh.id]
        if database_url.startswith("postgres"):
            async with rx.store._pool.acquire() as conn:  # type: ignore[attr-defined]
                names = {p.name for p in await list_partitions(conn)}
                assert "events_p" + _day(now - 100 * DAY_S) in names and len(names) >= 101
                assert await conn.fetchval("SELECT count(*) FROM events_default") == 60  # far past and future
                assert await conn.fetchval("SELECT count(*) FROM event_keys") == len(rows) + 1
    finally:
        await stop_receiver(rx)


# ---------------------------------------------------------------------------------------------- the command


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_maintain_command_prints_a_json_summary(
    backend: str, tmp_path: Path, smartpole_cmd: list[str], child_env: dict[str, str]
) -> None:
    async def run(url: str) -> dict[str, Any]:
        store = await open_store(url)
        try:
            await put(store, [wire(1_000_000_000.0, "telemetry"), wire(1_000_000_000.0, "alert")])
        finally:
            await store.close()
        config = tmp_path / "receiver.toml"
        config.write_text(
            f'[receiver]\ndatabase_url = "{url}"\nmedia_dir = "{tmp_path / "media"}"\n\n'
            "[retention]\ndefault_days = 0\n\n[retention.types]\ntelemetry = 30\n"
        )
        done = await asyncio.to_thread(
            subprocess.run,
            [*smartpole_cmd, "receiver", "maintain", "--config", str(config)],
            capture_output=True,
            text=True,
            env=child_env,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    if backend == "sqlite":
        summary = await run(f"sqlite:///{tmp_path / 'rx.db'}")
    else:
        async with pg_schema() as url:
            summary = await run(url)
        assert summary["partitions_created"] >= 8
    assert summary["backend"] == ("sqlite" if backend == "sqlite" else "postgresql")
    assert summary["rows_trimmed"] + summary["rows_dropped"] == 1 and summary["skipped"] is None


async def test_receivers_leave_retention_to_a_cron_job_when_told(tmp_path: Path) -> None:
    async with pg_schema() as url:
        store = await open_store(url)
        try:
            expired = wire(NOW - 40 * DAY_S, "telemetry")
            await put(store, [expired])
            config = RetentionSection(types={"telemetry": 30}, retention_in_receiver=False, maintenance_interval_s=60)
            task = asyncio.create_task(maintenance_loop(store, LocalMediaStore(tmp_path / "media"), config))
            try:
                async with asyncio.timeout(10):
                    while not await table_names(store):
                        await asyncio.sleep(0.02)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert ids(await stored(store)) == {expired.id}  # partitions made, nothing removed
        finally:
            await store.close()


async def test_a_receiver_process_makes_its_partitions_at_start(tmp_path: Path, child_env: dict[str, str]) -> None:
    import signal
    import sys

    from tests.helpers.pole import free_port

    async with pg_schema() as url:
        store = await open_store(url, 1)
        try:
            config = tmp_path / "receiver.toml"
            config.write_text(
                f'[receiver]\nport = {free_port()}\ndatabase_url = "{url}"\nmedia_dir = "{tmp_path / "media"}"\n'
                '[logging]\nformat = "json"\n[retention]\npartitions_ahead_days = 3\n'
            )
            proc = subprocess.Popen(
                [sys.executable, "-m", "smartpole.cli", "receiver", "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=child_env,
            )
            try:
                async with asyncio.timeout(30):
                    while len(await table_names(store)) < 7:  # three days behind, today, three ahead
                        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                        await asyncio.sleep(0.1)
            finally:
                proc.send_signal(signal.SIGTERM)
                output = (await asyncio.to_thread(proc.communicate, timeout=20))[0].decode()
            assert proc.returncode == 0, output
        finally:
            await store.close()


async def test_postgres_drops_wait_for_the_next_run_rather_than_stall_ingest() -> None:
    async with pg_schema() as url:
        store = await open_store(url)
        reader = await asyncpg.connect(url)
        try:
            await store.maintain(RetentionRules(), PartitionLayout(days=1, ahead_days=10), NOW - 5 * DAY_S)
            old = [wire(NOW - 14 * DAY_S, "telemetry") for _ in range(3)]
            await put(store, old)
            reading = reader.transaction()
            await reading.start()
            await reader.execute("LOCK TABLE events IN ACCESS SHARE MODE")  # a long report holding events
            rules = RetentionRules(types={"telemetry": 7})
            layout = PartitionLayout(days=1, ahead_days=1, lock_timeout_s=0.2)
            report = await asyncio.wait_for(store.maintain(rules, layout, NOW), 10)
            assert report.deferred == 1 and report.partitions_dropped == 0
            # Ingest went on meanwhile; after the report, the next run drops.
            assert await put(store, [wire(NOW, "telemetry")])
            await reading.rollback()
            report = await store.maintain(rules, layout, NOW)
            assert report.deferred == 0 and report.rows_dropped == 3
        finally:
            await reader.close()
            await store.close()


async def test_postgres_a_run_stopped_after_detaching_is_finished_by_the_next() -> None:
    async with pg_schema() as url:
        store = await open_store(url)
        try:
            await store.maintain(RetentionRules(), PartitionLayout(days=1, ahead_days=10), NOW - 5 * DAY_S)
            old = [wire(NOW - 14 * DAY_S, "telemetry") for _ in range(3)]
            await put(store, old)
            name = "events_p" + _day(NOW - 14 * DAY_S)
            async with store._pool.acquire() as conn:  # type: ignore[attr-defined]
                await conn.execute(f"ALTER TABLE events DETACH PARTITION {name}")
                await conn.execute(f"ALTER TABLE {name} RENAME TO events_expired_{name.removeprefix('events_')}")
            report = await store.maintain(RetentionRules(types={"telemetry": 7}), PartitionLayout(), NOW)
            assert report.rows_dropped == 3
            async with store._pool.acquire() as conn:  # type: ignore[attr-defined]
                assert await conn.fetchval("SELECT count(*) FROM event_keys") == 0
                assert await conn.fetchval("SELECT to_regclass($1)", "events_expired_" + name[7:]) is None
        finally:
            await store.close()


async def test_postgres_ingest_goes_on_while_maintenance_creates_drops_and_trims() -> None:
    """Batches, some for the very partitions being dropped, are stored while a run makes, detaches, drops and
    trims partitions: none fails, every kept event is readable and every key has its event."""
    async with pg_schema() as url:
        ingest, upkeep = await open_store(url, 4), await open_store(url, 2)
        try:
            await upkeep.maintain(RetentionRules(), PartitionLayout(days=1, ahead_days=10), NOW - 5 * DAY_S)
            for day in range(8, 15):
                await put(ingest, [wire(NOW - day * DAY_S + i, t) for i in range(300) for t in ("telemetry", "count")])
            await put(ingest, [wire(NOW - 15 * DAY_S + i, "telemetry") for i in range(300)])  # its day goes whole
            rules = RetentionRules(types={"telemetry": 7})
            layout = PartitionLayout(days=1, ahead_days=12, lock_timeout_s=5)
            sent: list[WireEvent] = []
            running = True

            async def keep_sending() -> None:
                n = 0
                while running:
                    n += 1
                    batch = [wire(NOW - (n % 16) * DAY_S + 0.5, "telemetry"), wire(NOW - 60 + n, "count")]
                    result = await ingest.insert_batch(POLE, str(uuid.uuid4()), batch, None, NOW)
                    assert sorted(result.accepted) == sorted(e.id for e in batch)
                    sent.extend(batch)

            senders = [asyncio.create_task(keep_sending()) for _ in range(3)]
            report = await upkeep.maintain(rules, layout, NOW)
            running = False
            await asyncio.gather(*senders)
            assert len(sent) >= 30, "the run was over before ingest got going"
            assert report.partitions_created > 0 and report.deferred == 0
            assert report.partitions_dropped == 1 and report.rows_dropped >= 300  # day 15: telemetry alone
            assert report.rows_trimmed >= 7 * 300  # the counts keep days 8 to 14: their telemetry is trimmed
            await upkeep.maintain(rules, layout, NOW)  # what arrived during the run, for trimmed days
            left = ids(await stored(ingest))
            # Telemetry goes by whole days: those ending by NOW - 7 days (midnight, NOW being 06:00).
            gone_before = NOW - 7 * DAY_S - 6 * 3600
            expired = {e.id for e in sent if e.type == "telemetry" and e.ts < gone_before}
            assert {e.id for e in sent} - expired <= left
            assert not any(e["type"] == "telemetry" and e["ts"] < gone_before for e in await stored(ingest))
            async with ingest._pool.acquire() as conn:  # type: ignore[attr-defined]
                assert await conn.fetchval("SELECT count(*) FROM event_keys") == len(left)
        finally:
            await ingest.close()
            await upkeep.close()


async def lock_waiters(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
    )


async def test_postgres_a_batch_for_a_partition_being_made_is_stored_in_it() -> None:
    """An insert that starts while a partition for its event's day is being made waits for it and lands in it,
    instead of being routed to the default by the partitions it saw first and failing the default's new bound."""
    async with pg_schema() as url:
        ingest, upkeep = await open_store(url, 2), await open_store(url, 2)
        holder = await asyncpg.connect(url)
        try:
            await upkeep.maintain(RetentionRules(), PartitionLayout(days=1, ahead_days=1), NOW)
            tomorrow_but_one = wire(NOW + 2 * DAY_S, "count")  # no partition yet: the run below makes it
            holding = holder.transaction()
            await holding.start()
            # Holds the run at its first lock (as a vacuum of events would) while the batch starts.
            await holder.execute("LOCK TABLE events IN SHARE UPDATE EXCLUSIVE MODE")
            run = asyncio.create_task(upkeep.maintain(RetentionRules(), PartitionLayout(days=1, ahead_days=3), NOW))
            while await lock_waiters(holder) < 1:
                await asyncio.sleep(0.02)
            batch = asyncio.create_task(put(ingest, [tomorrow_but_one]))
            while not batch.done() and await lock_waiters(holder) < 2:
                await asyncio.sleep(0.02)
            await holding.commit()
            report = await asyncio.wait_for(run, 10)
            assert await asyncio.wait_for(batch, 10) == [tomorrow_but_one.id]
            assert report.partitions_created == 2 and report.deferred == 0
            where = await holder.fetchval("SELECT tableoid::regclass::text FROM events")
            assert where == f"events_p{_day(NOW + 2 * DAY_S)}"
        finally:
            await holder.close()
            await ingest.close()
            await upkeep.close()


def test_maintain_command_without_its_database_fails_clearly(
    tmp_path: Path, smartpole_cmd: list[str], child_env: dict[str, str]
) -> None:
    from tests.helpers.pole import free_port

    config = tmp_path / "receiver.toml"
    config.write_text(f'[receiver]\ndatabase_url = "postgresql://nobody@127.0.0.1:{free_port()}/none"\n')
    done = subprocess.run(
        [*smartpole_cmd, "receiver", "maintain", "--config", str(config)],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=60,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert "smartpole receiver maintain: database unavailable" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
async def moto(tmp_path: Path) -> AsyncIterator[MotoServer]:
    server = await asyncio.to_thread(MotoServer(tmp_path / "moto.log").start)
    await make_bucket(server.url)
    yield server
    await asyncio.to_thread(server.stop)


async def test_media_in_object_storage_goes_with_its_last_event(moto: MotoServer, tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'rx.db'}")
    media = open_media_store(s3_section(moto.url), tmp_path / "unused")
    try:
        jpeg = real_jpeg()
        sha = hashlib.sha256(jpeg).hexdigest()
        await media.put(sha, "image/jpeg", jpeg)
        await store.add_media(sha, len(jpeg), POLE, NOW)
        await put(store, [wire(NOW - 40 * DAY_S, "snapshot", [sha])])
        assert await object_keys(moto.url) == [object_key(sha, "image/jpeg")]
        summary = await run_maintenance(store, media, RetentionSection(default_days=30), NOW)
        assert summary.media_deleted == 1 and summary.media_failed == 0
        assert await object_keys(moto.url) == []
    finally:
        await media.close()
        await store.close()
