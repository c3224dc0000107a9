"""Analytics answer times on 10 million events: load a city's month, then time every endpoint over HTTP.

Usage: python bench/analytics.py [--backend postgres|sqlite] [--events 10000000] [--poles 1000] [--days 30]
       [--requests 100]

The events (the types and data shapes poles send: presence, line counts, air quality, speed passes,
plate reads, violations) are spread over ``--poles`` poles, each tagged with one of 20 districts, and
the last ``--days`` days. They are written straight into a database of schema 4 (PostgreSQL: COPY
through asyncpg into a database of its own, ``bench_analytics``, dropped afterwards; SQLite: one
transaction into a temporary file), and the rollups are built by migration 5's backfill when the
store first opens it: the path a city's existing data takes on upgrade (new batches take the ingest
path; tests/test_analytics.py checks the two agree). The load time is the copy and the migration.

Then a real receiver process (``smartpole receiver``) answers ``--requests`` requests per endpoint,
one at a time, over loopback, cycling through representative questions (the whole city, a district,
one pole; an hour, a day, a week, the month); one round of every question first warms up. The last
line printed is one JSON object: ``events``, ``load_events_per_s`` and ``p50_ms``/``p99_ms`` per
endpoint, then the same per question.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson
import uuid_utils
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from receiver.auth import new_token, token_hash  # noqa: E402
from receiver.store import postgres, sqlite  # noqa: E402
from receiver.store.factory import open_store  # noqa: E402

PG_URL = os.environ.get("SMARTPOLE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
DATABASE = "bench_analytics"
H = 3600
DAY = 86_400
DISTRICTS = 20
COPY_CHUNK = 100_000
COLUMNS = [
    "pole_id",
    "event_id",
    "seq",
    "ts",
    "type",
    "priority",
    "lat",
    "lon",
    "location_source",
    "data",
    "media",
    "received_at",
    "batch_id",
]
# (type, priority, share of the events)
MIX = [
    ("presence", "event", 0.30),
    ("speed", "telemetry", 0.25),
    ("count", "event", 0.20),
    ("air_quality", "telemetry", 0.20),
    ("plate_read", "event", 0.04),
    ("traffic_violation", "alert", 0.01),
]


def pole_name(i: int) -> str:
    return f"pole-{i:04d}"


def district(i: int) -> str:
    return f"district-{i % DISTRICTS:02d}"


def event_data(type_: str, ts: float, rng: random.Random) -> dict[str, Any]:
    """What the pole's producers put in ``data`` (gateway/vision/events.py, gateway/sensing/)."""
    if type_ == "presence":
        people = rng.randint(0, 6)
        return {"camera": "cam0", "zone": "crossing", "counts": {"person": people}, "total": people, "track_ids": []}
    if type_ == "speed":
        kmh = round(max(3.0, rng.gauss(44.0, 9.0)), 1)
        return {
            "sensor": "radar0",
            "direction": "inbound" if rng.random() < 0.5 else "outbound",
            "speed_kmh": kmh,
            "mean_speed_kmh": round(kmh * 0.93, 1),
            "readings": rng.randint(5, 30),
            "duration_s": 1.4,
            "limit_kmh": 50.0,
            "over_limit": kmh > 50.0,
        }
    if type_ == "count":
        return {
            "camera": "cam0",
            "line": "north" if rng.random() < 0.5 else "south",
            "period_start": ts - ts % 60,
            "period_s": 60.0,
            "counts": {
                "in": {"person": rng.randint(0, 9), "car": rng.randint(0, 14)},
                "out": {"person": rng.randint(0, 9), "bicycle": rng.randint(0, 3)},
            },
        }
    if type_ == "air_quality":
        pm25 = round(rng.uniform(2.0, 60.0), 1)
        return {
            "sensor": "pms0",
            "period_s": 60,
            "samples": 60,
            "pm1_0": round(pm25 * 0.7, 1),
            "pm2_5": pm25,
            "pm10": round(pm25 * 1.4, 1),
            "particles_0_3": 1200.0,
        }
    if type_ == "plate_read":
        return {
            "camera": "cam0",
            "track_id": rng.randint(1, 10_000),
            "vehicle": "car",
            "confidence": 0.91,
            "engines": ["ocr"],
            "plate_box": [0.4, 0.6, 0.5, 0.65],
            "plate_policy": "drop",
        }
    return {"sensor": "radar0", "camera": "cam0", "direction": "inbound", "speed_kmh": 71.2, "limit_kmh": 50.0}


def records(events: int, poles: int, start: float, span: float) -> Iterator[tuple[Any, ...]]:
    """Every event as a row of ``COLUMNS``, pole by pole in time order."""
    rng = random.Random(11)
    thresholds, total = [], 0.0
    for type_, priority, share in MIX:
        total += share
        thresholds.append((total, type_, priority))
    batch_id = str(uuid_utils.uuid7())
    for p in range(poles):
        pole = pole_name(p)
        lat, lon = 52.0 + p / 10_000, 4.3 + p / 10_000
        n = events // poles + (1 if p < events % poles else 0)
        for seq, ts in enumerate(sorted(start + rng.random() * span for _ in range(n)), 1):
            pick = rng.random() * total
            _, type_, priority = next(t for t in thresholds if pick <= t[0])
            data = orjson.dumps(event_data(type_, ts, rng)).decode()
            yield (
                pole,
                str(uuid_utils.uuid7()),
                seq,
                ts,
                type_,
                priority,
                lat,
                lon,
                "config",
                data,
                "[]",
                ts + 3,
                batch_id,
            )


def chunks(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def poles_rows(poles: int, now: float) -> tuple[list[tuple[Any, ...]], list[tuple[str, str]]]:
    return (
        [(pole_name(p), now, now, now) for p in range(poles)],
        [(pole_name(p), district(p)) for p in range(poles)],
    )


async def load_postgres(url: str, events: int, poles: int, start: float, span: float) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version in (1, 2, 4):
            for statement in postgres.MIGRATIONS[version]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
        pole_rows, tag_rows = poles_rows(poles, time.time())
        await conn.executemany(
            "INSERT INTO poles (pole_id, created_at, last_seen, first_seen) VALUES ($1, $2, $3, $4)", pole_rows
        )
        await conn.executemany("INSERT INTO pole_tags (pole_id, tag) VALUES ($1, $2)", tag_rows)
        for chunk in chunks(records(events, poles, start, span), COPY_CHUNK):
            await conn.copy_records_to_table("events", records=chunk, columns=COLUMNS)
    finally:
        await conn.close()


def load_sqlite(path: Path, events: int, poles: int, start: float, span: float) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN")
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version in (1, 2, 4):
            for statement in sqlite.MIGRATIONS[version]:
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        pole_rows, tag_rows = poles_rows(poles, time.time())
        db.executemany("INSERT INTO poles (pole_id, created_at, last_seen, first_seen) VALUES (?, ?, ?, ?)", pole_rows)
        db.executemany("INSERT INTO pole_tags (pole_id, tag) VALUES (?, ?)", tag_rows)
        marks = ", ".join("?" * len(COLUMNS))
        db.executemany(
            f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({marks})", records(events, poles, start, span)
        )
        db.execute("COMMIT")
    finally:
        db.close()


def questions(days: int) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """Per endpoint, (label, parameters) of the questions it is timed with; {pole}, {tag} and the
    window's offset are drawn anew for each request."""
    month, week = min(days, 30) * DAY, min(days, 7) * DAY
    return {
        "counts": [
            ("city by type, month", {"by": "type", "span": str(month)}),
            ("city by pole, month", {"by": "pole", "span": str(month)}),
            ("city by day, month", {"by": "day", "span": str(month)}),
            ("city by hour, week", {"by": "hour", "span": str(week)}),
            ("district by hour, week", {"by": "hour", "tag": "{tag}", "span": str(week)}),
            ("district speed by day, month", {"by": "day", "tag": "{tag}", "type": "speed", "span": str(month)}),
            ("pole by hour, month", {"by": "hour", "pole": "{pole}", "span": str(month)}),
            ("pole by type, day", {"by": "type", "pole": "{pole}", "span": str(DAY)}),
        ],
        "last24h": [
            ("city", {}),
            ("district", {"tag": "{tag}"}),
            ("pole", {"pole": "{pole}"}),
        ],
        "traffic": [
            ("city, an hour", {"span": str(H)}),
            ("district, a day", {"tag": "{tag}", "span": str(DAY)}),
            ("pole, a week", {"pole": "{pole}", "span": str(week)}),
        ],
        "air": [
            ("city, six hours", {"span": str(6 * H)}),
            ("district, a day", {"tag": "{tag}", "span": str(DAY)}),
            ("pole, the month", {"pole": "{pole}", "span": str(month)}),
        ],
        "speed": [
            ("city, three hours", {"span": str(3 * H)}),
            ("district, a day", {"tag": "{tag}", "span": str(DAY)}),
            ("pole, the month", {"pole": "{pole}", "span": str(month)}),
        ],
    }


def concrete(params: dict[str, str], end: int, days: int, poles: int, rng: random.Random) -> dict[str, str]:
    out = {k: v for k, v in params.items() if k != "span"}
    if "span" in params:
        span = int(params["span"])
        until = end - rng.randint(0, max(0, (days * DAY - span) // H)) * H  # anywhere in the loaded days
        out["since"], out["until"] = str(until - span), str(until)
    if out.get("pole") == "{pole}":
        out["pole"] = pole_name(rng.randrange(poles))
    if out.get("tag") == "{tag}":
        out["tag"] = district(rng.randrange(DISTRICTS))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


async def time_endpoints(url: str, reader: str, end: int, days: int, poles: int, requests: int) -> dict[str, Any]:
    rng = random.Random(5)
    headers = {"Authorization": f"Bearer {reader}"}
    out: dict[str, Any] = {}
    per_question: dict[str, Any] = {}
    async with aiohttp.ClientSession(headers=headers) as s:

        async def ask(endpoint: str, params: dict[str, str]) -> tuple[float, int]:
            started = time.perf_counter()
            async with s.get(f"{url}/v1/analytics/{endpoint}", params=params) as r:
                body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{endpoint} {params}: {r.status} {body[:300]!r}")
            return (time.perf_counter() - started) * 1000, len(orjson.loads(body)["rows"])

        for endpoint, asked in questions(days).items():
            for _, params in asked:  # warm-up: one of each
                await ask(endpoint, concrete(params, end, days, poles, rng))
            times: list[float] = []
            by_label: dict[str, list[float]] = {label: [] for label, _ in asked}
            rows: dict[str, int] = {}
            for i in range(requests):
                label, params = asked[i % len(asked)]
                ms, n = await ask(endpoint, concrete(params, end, days, poles, rng))
                times.append(ms)
                by_label[label].append(ms)
                rows[label] = max(rows.get(label, 0), n)
            out[endpoint] = {
                "p50_ms": round(statistics.median(times), 1),
                "p99_ms": round(percentile(times, 0.99), 1),
                "requests": len(times),
            }
            for label, values in by_label.items():
                per_question[f"{endpoint}: {label}"] = {
                    "p50_ms": round(statistics.median(values), 1),
                    "max_ms": round(max(values), 1),
                    "rows": rows[label],
                }
    out["questions"] = per_question
    return out


async def wait_listening(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(600):
            try:
                async with s.get(f"{url}/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the receiver did not start")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(backend: str, events: int, poles: int, days: int, requests: int, workdir: Path) -> dict[str, Any]:
    end = (int(time.time()) // H + 1) * H  # the hour under way is the last one with events
    start = end - days * DAY
    span = time.time() - start  # up to now: none in the future
    admin = None
    if backend == "postgres":
        admin = await asyncpg.connect(PG_URL)
        await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        await admin.execute(f"CREATE DATABASE {DATABASE}")
        parts = urlsplit(PG_URL)
        database_url = urlunsplit(parts._replace(path=f"/{DATABASE}"))
    else:
        database_url = f"sqlite:///{workdir / 'receiver.db'}"
    receiver = None
    try:
        t0 = time.perf_counter()
        if backend == "postgres":
            await load_postgres(database_url, events, poles, start, span)
        else:
            load_sqlite(workdir / "receiver.db", events, poles, start, span)
        copy_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        store = await open_store(database_url)  # migration 5: the rollups from the events
        backfill_s = time.perf_counter() - t1
        reader = new_token()
        await store.add_token(token_hash(reader), "reader", None, "bench")
        await store.close()
        load_s = time.perf_counter() - t0

        port = free_port()
        conf = workdir / "receiver.toml"
        conf.write_text(
            f'[receiver]\nport = {port}\nmedia_dir = "{workdir / "media"}"\n\n'
            '[logging]\nlevel = "warning"\nformat = "json"\n'
        )
        env = dict(os.environ, SMARTPOLE_RECEIVER_DATABASE_URL=database_url, PYTHONPATH=str(ROOT))
        receiver = subprocess.Popen(
            [sys.executable, "-m", "smartpole.cli", "receiver", "--config", str(conf)], env=env, cwd=workdir
        )
        url = f"http://127.0.0.1:{port}"
        await wait_listening(url)
        timed = await time_endpoints(url, reader, end, days, poles, requests)
    finally:
        if receiver is not None:
            receiver.terminate()
            receiver.wait(30)
        if admin is not None:
            await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            await admin.close()
    questions_timed = timed.pop("questions")
    return {
        "bench": "analytics",
        "backend": backend,
        "events": events,
        "poles": poles,
        "days": days,
        "rollups_built_by": "migration 5 backfill",
        "copy_s": round(copy_s, 1),
        "backfill_s": round(backfill_s, 1),
        "load_s": round(load_s, 1),
        "load_events_per_s": round(events / load_s),
        **timed,
        "questions": questions_timed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="postgres")
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--poles", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--requests", type=int, default=100, help="timed requests per endpoint")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-analytics-") as tmp:
        result = uvloop.run(run(args.backend, args.events, args.poles, args.days, args.requests, Path(tmp)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
