"""Retention on PostgreSQL at city scale: load N events spread over D days into the partitioned events
table, then time one ``maintain`` run whose retention removes about a third of them.

A dedicated database is created and dropped afterwards. Events are loaded server-side (one
``INSERT ... SELECT generate_series`` per chunk writes the events and their keys), in time order as
poles send them; 60% telemetry, 30% counts, 10% alerts, one in 200 with a media reference. The
retention is ``default_days = 25`` and ``telemetry = 20`` over 33 days: partitions older than 25 days
are dropped whole, telemetry is trimmed from those 20 to 25 days old. The events list
(``GET /v1/events``: first page, a page at a cursor halfway, one pole's page) is timed before and after.

    .venv/bin/python bench/retention.py --events 200000
    .venv/bin/python bench/retention.py --events 10000000

The last line is JSON: events, days, partitions, load_s, retention_s, partitions_dropped, rows_dropped,
rows_trimmed, media_deleted, events_left and the query times in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from receiver.config import RetentionSection  # noqa: E402
from receiver.maintenance import run_maintenance  # noqa: E402
from receiver.mediastore.local import LocalMediaStore  # noqa: E402
from receiver.store.base import DAY_S, EventQuery, PartitionLayout, RetentionRules, Store  # noqa: E402
from receiver.store.factory import open_store  # noqa: E402

ADMIN_URL = os.environ.get("SMARTPOLE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CHUNK = 500_000

_LOAD = """
WITH g AS (
    SELECT i, gen_random_uuid() AS id, $3::float8 + (i - 1) * $4::float8 AS ts, 'pole-' || (i % 1000) AS pole
    FROM generate_series($1::bigint, $2::bigint) AS i
), k AS (
    INSERT INTO event_keys (pole_id, event_id) SELECT pole, id FROM g
), m AS (
    INSERT INTO media (sha256, size, pole_id, stored_at)
    SELECT md5(i::text) || md5((i + 1)::text), 50000, pole, ts FROM g WHERE i % 200 = 0
)
INSERT INTO events (pole_id, event_id, seq, ts, type, priority, data, media, received_at, batch_id)
SELECT pole, id, i, ts,
       CASE WHEN i % 10 < 6 THEN 'telemetry' WHEN i % 10 < 9 THEN 'count' ELSE 'alert' END,
       'event', jsonb_build_object('v', i % 97),
       CASE WHEN i % 200 = 0 THEN jsonb_build_array(md5(i::text) || md5((i + 1)::text)) ELSE '[]'::jsonb END,
       ts, 'bench'
FROM g
"""


async def timed_query(store: Store, query: EventQuery, repeat: int = 5) -> float:
    """The best of ``repeat`` runs, in ms (the machine is shared: the best is the least disturbed)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        await store.query_events(query)
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 2)


async def queries(store: Store, middle: int) -> dict[str, float]:
    return {
        "first_page_ms": await timed_query(store, EventQuery(limit=100)),
        "cursor_page_ms": await timed_query(store, EventQuery(after=middle, limit=100)),
        "pole_page_ms": await timed_query(store, EventQuery(pole_id="pole-7", limit=100)),
    }


async def bench(events: int, days: int) -> dict[str, Any]:
    name = f"smartpole_bench_retention_{os.getpid()}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f"CREATE DATABASE {name}")
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        store = await open_store(url, 2)
        try:
            now = time.time()
            start = now - days * DAY_S
            await store.maintain(RetentionRules(), PartitionLayout(days=1, ahead_days=days + 1), now)
            conn = await asyncpg.connect(url)
            try:
                partitions = await conn.fetchval(
                    "SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass"
                )
                started = time.perf_counter()
                step = days * DAY_S / events
                for first in range(1, events + 1, CHUNK):
                    await conn.execute(_LOAD, first, min(first + CHUNK - 1, events), start, step)
                await conn.execute("ANALYZE events")
                await conn.execute("ANALYZE event_keys")
                load_s = time.perf_counter() - started
                before = await queries(store, events // 2)
                config = RetentionSection(default_days=25, types={"telemetry": 20})
                with tempfile.TemporaryDirectory() as media_dir:
                    summary = await run_maintenance(store, LocalMediaStore(Path(media_dir)), config, now)
                left = await conn.fetchval("SELECT count(*) FROM events")
                keys_left = await conn.fetchval("SELECT count(*) FROM event_keys")
                after = await queries(store, events // 2)
            finally:
                await conn.close()
        finally:
            await store.close()
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()
    return {
        "events": events,
        "days": days,
        "partitions": partitions,
        "load_s": round(load_s, 1),
        "load_events_per_s": round(events / load_s),
        "retention_s": summary.seconds,
        "partitions_dropped": summary.partitions_dropped,
        "rows_dropped": summary.rows_dropped,
        "rows_trimmed": summary.rows_trimmed,
        "removed_fraction": round((summary.rows_dropped + summary.rows_trimmed) / events, 3),
        "media_released": summary.media_deleted,
        "events_left": left,
        "keys_left": keys_left,
        "query_before": before,
        "query_after": after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=33)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(bench(args.events, args.days))))


if __name__ == "__main__":
    main()
