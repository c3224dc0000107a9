"""Analytics at the receiver over real HTTP on both backends: counts, the city's aggregates, roles,
bad parameters, exactly-once rollups under replays, and migration 5 building them from old events."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import random
import time
from typing import Any

import aiohttp
import asyncpg
import pytest
import uuid_utils

from receiver.store import postgres as postgres_store
from receiver.store import sqlite as sqlite_store
from receiver.store.analytics import CountsQuery, Window
from receiver.store.factory import open_store
from sync.protocol import WireEvent
from tests.conftest import RunningReceiver, start_receiver, stop_receiver
from tests.test_fleet import add_admin
from tests.test_receiver import batch, post

Json = dict[str, Any]
H = 3600
DAY = 86_400
BASE = int(dt.datetime(2026, 11, 2, tzinfo=dt.UTC).timestamp())  # a Monday, 00:00 UTC, in the past


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ev(ts: float, type_: str = "presence", priority: str = "event", **data: Any) -> Json:
    return {
        "id": str(uuid_utils.uuid7()),
        "seq": 1,
        "ts": ts,
        "type": type_,
        "priority": priority,
        "location": None,
        "data": data or {"total": 1},
        "media": [],
    }


def speed(ts: float, kmh: Any, over: bool) -> Json:
    return ev(ts, "speed", "telemetry", speed_kmh=kmh, over_limit=over, limit_kmh=50.0)


def air(ts: float, pm25: Any, pm10: Any, samples: Any) -> Json:
    return ev(ts, "air_quality", "telemetry", sensor="pms", period_s=60, samples=samples, pm2_5=pm25, pm10=pm10)


def crossings(ts: float, period_start: Any, line: Any, counts: Any) -> Json:
    return ev(ts, "count", "event", camera="cam0", line=line, period_start=period_start, period_s=60, counts=counts)


async def send(rx: RunningReceiver, pole: str, events: list[Json]) -> Json:
    for seq, e in enumerate(events, 1):
        e["seq"] = seq
    status, reply = await post(rx.url, batch(pole, events), rx.tokens[pole])
    assert status == 200, reply
    return reply


async def get(rx: RunningReceiver, path: str, token: str | None, **params: Any) -> tuple[int, Json]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    query = {k: str(v) for k, v in params.items()}
    async with aiohttp.ClientSession() as s, s.get(rx.url + path, params=query, headers=headers) as r:
        return r.status, await r.json(content_type=None)


@pytest.fixture
async def reader(receiver: RunningReceiver) -> str:
    await receiver.add_pole("pole-2")
    return await receiver.add_reader()


# Day 0 (BASE) from 20:00 to day 2 05:00 is the window below: the whole of day 1 comes from the daily
# rollups, the edges from the hourly ones; events just outside it must not count.
PLAN: list[tuple[str, float, str]] = [
    ("pole-1", BASE + 19 * H + 3599.5, "presence"),  # outside: before 20:00
    ("pole-1", BASE + 20 * H, "presence"),
    ("pole-1", BASE + 20 * H + 10, "speed"),
    ("pole-2", BASE + 23 * H + 59, "presence"),
    ("pole-1", BASE + DAY + 3 * H, "presence"),
    ("pole-2", BASE + DAY + 3 * H + 7, "plate_read"),
    ("pole-2", BASE + DAY + 12 * H, "presence"),
    ("pole-1", BASE + 2 * DAY + 4 * H + 1800, "speed"),
    ("pole-2", BASE + 2 * DAY + 5 * H, "presence"),  # outside: until is exclusive
]
SINCE, UNTIL = BASE + 20 * H, BASE + 2 * DAY + 5 * H


def plan_events() -> dict[str, list[Json]]:
    by_pole: dict[str, list[Json]] = {"pole-1": [], "pole-2": []}
    for pole, ts, type_ in PLAN:
        by_pole[pole].append(speed(ts, 40.0, False) if type_ == "speed" else ev(ts, type_))
    return by_pole


async def test_counts_by_type_pole_hour_and_day_with_filters_and_replays(
    receiver: RunningReceiver, reader: str
) -> None:
    events = plan_events()
    await send(receiver, "pole-1", events["pole-1"])
    await send(receiver, "pole-2", events["pole-2"][:2])
    # The rest of pole-2's twice at once and then again: duplicates are not counted again.
    rest = batch("pole-2", events["pole-2"])
    token = receiver.tokens["pole-2"]
    replies = await asyncio.gather(post(receiver.url, rest, token), post(receiver.url, rest, token))
    assert sum(len(r["accepted"]) for _, r in replies) == 2
    await send(receiver, "pole-2", events["pole-2"])
    await receiver.store.set_pole_tags("pole-2", ["north"])

    async def counts(**params: Any) -> list[tuple[str, int]]:
        status, body = await get(receiver, "/v1/analytics/counts", reader, since=SINCE, until=UNTIL, **params)
        assert status == 200, body
        assert body["since"] == iso(SINCE) and body["until"] == iso(UNTIL) and body["by"] == params["by"]
        return [(row["key"], row["count"]) for row in body["rows"]]

    assert await counts(by="type") == [("plate_read", 1), ("presence", 4), ("speed", 2)]
    assert await counts(by="pole") == [("pole-1", 4), ("pole-2", 3)]
    assert await counts(by="day") == [(iso(BASE), 3), (iso(BASE + DAY), 3), (iso(BASE + 2 * DAY), 1)]
    assert await counts(by="hour") == [
        (iso(BASE + 20 * H), 2),
        (iso(BASE + 23 * H), 1),
        (iso(BASE + DAY + 3 * H), 2),
        (iso(BASE + DAY + 12 * H), 1),
        (iso(BASE + 2 * DAY + 4 * H), 1),
    ]
    assert await counts(by="type", pole="pole-1") == [("presence", 2), ("speed", 2)]
    assert await counts(by="day", type="presence") == [(iso(BASE), 2), (iso(BASE + DAY), 2)]
    assert await counts(by="pole", tag="north") == [("pole-2", 3)]
    assert await counts(by="hour", tag="north", type="presence") == [
        (iso(BASE + 23 * H), 1),
        (iso(BASE + DAY + 12 * H), 1),
    ]
    assert await counts(by="type", tag="nowhere") == []
    assert await counts(by="type", pole="pole-1", tag="north") == [], "pole-1 does not carry the tag"

    # Times in ISO-8601 too; a window inside one hour widens to that hour; no whole day: hours only.
    status, body = await get(
        receiver,
        "/v1/analytics/counts",
        reader,
        since="2026-11-02T20:10:00Z",
        until="2026-11-02T20:20:00+00:00",
        by="day",
    )
    assert status == 200 and body["since"] == iso(SINCE) and body["until"] == iso(SINCE + H)
    assert body["rows"] == [{"key": iso(BASE), "count": 2}]


async def test_traffic_air_and_speed_aggregates(receiver: RunningReceiver, reader: str) -> None:
    hour = BASE + 7 * H
    await send(
        receiver,
        "pole-1",
        [
            # Reported just after the hour, counted in its last minute: it belongs to that hour.
            crossings(hour + H + 2, hour + H - 60, "north", {"in": {"person": 3, "car": 1}, "out": {"person": 2}}),
            crossings(hour + 120, hour + 60, "north", {"in": {"person": 4}}),
            crossings(hour + 200, hour + 140, "north", {"in": {"person": -1, "car": 1.5, "bus": "2"}, "out": []}),
            crossings(hour + 300, "soon", "south", {"out": {"bicycle": 1}}),  # no period start: its ts
            crossings(hour + 400, hour + 340, 7, {"in": {"car": 9}}),  # no line name: left out
            air(hour + 60, 10.0, 15, 60),
            air(hour + 120, 20, 30.0, 30),
            air(hour + 180, 40.0, 50.0, 10),
            air(hour + 240, "high", 50.0, 10),  # not a number: left out
            air(hour + H + 60, 5.5, 7.5, "many"),  # next hour; samples not a count: weighs one
            *[
                speed(hour + 10 * i, kmh, kmh > 50)
                for i, kmh in enumerate([30.0, 42.5, 50.1, 55.0, 61.2, 48.0, 35.5, 70.3, 52.0, 44.4])
            ],
            speed(hour + 500, "fast", True),  # not a number: counted as an event, not as a pass
            speed(hour + H + 5, 33, False),
        ],
    )
    await send(receiver, "pole-2", [air(hour + 30, 1.0, 2.0, 60)])
    window = {"since": iso(hour), "until": iso(hour + 2 * H)}

    status, body = await get(receiver, "/v1/analytics/traffic", reader, **window)
    assert status == 200, body
    assert body["rows"] == [
        {"hour": iso(hour), "pole_id": "pole-1", "line": "north", "direction": d, "class": c, "count": n}
        for d, c, n in [("in", "car", 1), ("in", "person", 7), ("out", "person", 2)]
    ] + [{"hour": iso(hour), "pole_id": "pole-1", "line": "south", "direction": "out", "class": "bicycle", "count": 1}]

    status, body = await get(receiver, "/v1/analytics/air", reader, **window)
    assert status == 200, body
    assert body["rows"] == [
        # (10*60 + 20*30 + 40*10) / 100 and (15*60 + 30*30 + 50*10) / 100
        {
            "hour": iso(hour),
            "pole_id": "pole-1",
            "pm25_mean": 16.0,
            "pm25_max": 40.0,
            "pm10_mean": 23.0,
            "pm10_max": 50.0,
            "samples": 100,
        },
        {
            "hour": iso(hour),
            "pole_id": "pole-2",
            "pm25_mean": 1.0,
            "pm25_max": 1.0,
            "pm10_mean": 2.0,
            "pm10_max": 2.0,
            "samples": 60,
        },
        {
            "hour": iso(hour + H),
            "pole_id": "pole-1",
            "pm25_mean": 5.5,
            "pm25_max": 5.5,
            "pm10_mean": 7.5,
            "pm10_max": 7.5,
            "samples": 1,
        },
    ]

    status, body = await get(receiver, "/v1/analytics/speed", reader, pole="pole-1", **window)
    assert status == 200, body
    # Sorted: 30.0 35.5 42.5 44.4 48.0 50.1 52.0 55.0 61.2 70.3; nearest rank: the 5th and the 9th.
    assert body["rows"] == [
        {"hour": iso(hour), "pole_id": "pole-1", "count": 10, "p50": 48.0, "p85": 61.2, "max": 70.3, "violations": 5},
        {
            "hour": iso(hour + H),
            "pole_id": "pole-1",
            "count": 1,
            "p50": 33.0,
            "p85": 33.0,
            "max": 33.0,
            "violations": 0,
        },
    ]
    status, body = await get(receiver, "/v1/analytics/speed", reader, tag="none", **window)
    assert status == 200 and body["rows"] == []

    status, body = await get(receiver, "/v1/analytics/counts", reader, by="type", pole="pole-1", **window)
    assert body["rows"] == [
        {"key": "air_quality", "count": 5},
        {"key": "count", "count": 5},
        {"key": "speed", "count": 12},
    ]


async def test_last24h_by_hour_and_type(receiver: RunningReceiver, reader: str) -> None:
    now = time.time()
    this_hour = int(now // H) * H
    await send(
        receiver,
        "pole-1",
        [ev(now - 1), ev(now - 2, "speed"), ev(now - H), ev(this_hour - 23 * H + 1), ev(this_hour - 23 * H - 1)],
    )
    await send(receiver, "pole-2", [ev(now - 3)])
    await receiver.store.set_pole_tags("pole-2", ["north"])
    status, body = await get(receiver, "/v1/analytics/last24h", reader)
    assert status == 200, body
    assert body["since"] == iso(this_hour - 23 * H) and body["until"] == iso(this_hour + H)
    rows = [(r["hour"], r["type"], r["count"]) for r in body["rows"]]
    # ``now - 1`` may have crossed into the hour before if the test started right at its turn.
    expected: dict[tuple[str, str], int] = {}
    for ts, type_ in [(now - 1, "presence"), (now - 2, "speed"), (now - H, "presence"), (now - 3, "presence")]:
        key = (iso(int(ts // H) * H), type_)
        expected[key] = expected.get(key, 0) + 1
    expected[(iso(this_hour - 23 * H), "presence")] = 1
    assert rows == sorted((h, t, n) for (h, t), n in expected.items())
    status, body = await get(receiver, "/v1/analytics/last24h", reader, tag="north")
    assert [(r["type"], r["count"]) for r in body["rows"]] == [("presence", 1)]


ROUTES = ["counts", "last24h", "traffic", "air", "speed"]


async def test_readers_and_admins_may_read_poles_may_not(receiver: RunningReceiver, reader: str) -> None:
    admin = await add_admin(receiver)
    params = {"since": BASE, "until": BASE + DAY, "by": "type"}
    for route in ROUTES:
        path = f"/v1/analytics/{route}"
        query = {} if route == "last24h" else {k: v for k, v in params.items() if route == "counts" or k != "by"}
        for token in (reader, admin):
            status, body = await get(receiver, path, token, **query)
            assert status == 200 and body["rows"] == [], (route, body)
        status, body = await get(receiver, path, receiver.tokens["pole-1"], **query)
        assert status == 403 and "pole" in body["error"], route
        assert (await get(receiver, path, None, **query))[0] == 401
        assert (await get(receiver, path, "spt_unknown", **query))[0] == 401


GOOD = {"since": str(BASE), "until": str(BASE + DAY), "by": "hour"}
BAD: list[tuple[str, dict[str, str], str]] = [
    ("counts", {"since": "yesterday"}, "since"),
    ("counts", {"since": "2026-11-02T00:00:00"}, "since"),  # no zone
    ("counts", {"until": "nan"}, "until"),
    ("counts", {"until": "1e300"}, "until"),
    ("counts", {"since": "-5"}, "since"),
    ("counts", {"until": str(BASE)}, "until"),  # not after since
    ("counts", {"until": str(BASE + 401 * DAY)}, "until"),
    ("counts", {"by": "week"}, "by"),
    ("counts", {"by": ""}, "by"),
    ("counts", {"type": "Presence!"}, "type"),
    ("counts", {"pole": "../etc"}, "pole"),
    ("counts", {"tag": "a b"}, "tag"),
    ("counts", {"limit": "5"}, "limit"),
    ("traffic", {"by": "hour"}, "by"),
    ("air", {"pole": "x" * 65}, "pole"),
    ("speed", {"tag": ""}, "tag"),
    ("last24h", {"since": str(BASE)}, "since"),
    ("last24h", {"pole": "-bad"}, "pole"),
]


async def test_every_bad_parameter_is_a_400_naming_it(receiver: RunningReceiver, reader: str) -> None:
    for route, change, name in BAD:
        base = {} if route == "last24h" else {k: v for k, v in GOOD.items() if route == "counts" or k != "by"}
        status, body = await get(receiver, f"/v1/analytics/{route}", reader, **{**base, **change})
        assert status == 400 and body["error"].startswith(f"{name}:"), (route, change, body)
    for route in ("counts", "traffic", "air", "speed"):
        for missing in ("since", "until"):
            query = {k: v for k, v in GOOD.items() if k != missing and (route == "counts" or k != "by")}
            status, body = await get(receiver, f"/v1/analytics/{route}", reader, **query)
            assert status == 400 and body["error"].startswith(f"{missing}:"), (route, body)
    status, body = await get(receiver, "/v1/analytics/counts", reader, since=BASE, until=BASE + DAY)
    assert status == 400 and body["error"].startswith("by:")
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            receiver.url + f"/v1/analytics/air?since={BASE}&since={BASE}&until={BASE + H}",
            headers={"Authorization": f"Bearer {reader}"},
        ) as r,
    ):
        assert r.status == 400 and (await r.json())["error"].startswith("since:")


async def test_too_many_rows_is_a_400(database_url: str, tmp_path: Any) -> None:
    rx = await start_receiver(database_url, tmp_path / "media", analytics_max_rows=1)
    try:
        await rx.add_pole("pole-1")
        reader = await rx.add_reader()
        await send(rx, "pole-1", [air(BASE + 10, 1, 1, 1), air(BASE + H + 10, 1, 1, 1)])
        status, body = await get(rx, "/v1/analytics/air", reader, since=BASE, until=BASE + H)
        assert status == 200 and len(body["rows"]) == 1
        status, body = await get(rx, "/v1/analytics/air", reader, since=BASE, until=BASE + 2 * H)
        assert status == 400 and body["error"].startswith("until:") and "1 rows" in body["error"]
    finally:
        await stop_receiver(rx)


# Each rollup table as comparable rows (the fleet's summed over shards, which only spread locks).
ROLLUPS = {
    "rollup_pole_hourly": "SELECT pole_id, hour, type, n FROM rollup_pole_hourly",
    "rollup_pole_daily": "SELECT pole_id, day, type, n FROM rollup_pole_daily",
    "rollup_pole_hourly_total": "SELECT pole_id, hour, n FROM rollup_pole_hourly_total",
    "rollup_pole_daily_total": "SELECT pole_id, day, n FROM rollup_pole_daily_total",
    "rollup_fleet_hourly": "SELECT hour, type, CAST(sum(n) AS BIGINT) FROM rollup_fleet_hourly GROUP BY 1, 2",
    "rollup_fleet_daily": "SELECT day, type, CAST(sum(n) AS BIGINT) FROM rollup_fleet_daily GROUP BY 1, 2",
    "rollup_traffic": "SELECT pole_id, hour, line, direction, class, n FROM rollup_traffic",
    "rollup_air": "SELECT pole_id, hour, pm25_sum, pm25_max, pm10_sum, pm10_max, samples FROM rollup_air",
    "rollup_speed": "SELECT pole_id, hour, bucket, n, over_limit FROM rollup_speed",
}


async def rollups(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    if database_url.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            return {table: sorted(db.execute(sql)) for table, sql in ROLLUPS.items()}
        finally:
            db.close()
    conn: Any = await asyncpg.connect(database_url)
    try:
        return {table: sorted(tuple(r) for r in await conn.fetch(sql)) for table, sql in ROLLUPS.items()}
    finally:
        await conn.close()


async def rebuild_by_migration_5(database_url: str) -> None:
    """Drop the rollups and run migration 5's statements again over the events stored, as a receiver
    moving to schema 5 would (later migrations do not touch the rollups)."""
    drops = [f"DROP TABLE {table}" for table in ROLLUPS]
    if database_url.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        for statement in [*drops, *sqlite_store.MIGRATIONS[5]]:
            db.execute(statement)
        db.commit()
        db.close()
        return
    conn: Any = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            for statement in [*drops, *postgres_store.MIGRATIONS[5]]:
                await conn.execute(statement)
    finally:
        await conn.close()


def close_enough(a: dict[str, list[tuple[Any, ...]]], b: dict[str, list[tuple[Any, ...]]]) -> bool:
    for table in ROLLUPS:
        if len(a[table]) != len(b[table]):
            return False
        for x, y in zip(a[table], b[table], strict=True):
            for u, v in zip(x, y, strict=True):
                if isinstance(u, float) or isinstance(v, float):
                    if not math.isclose(u, v, rel_tol=1e-12):
                        return False
                elif u != v:
                    return False
    return True


def odd(rng: random.Random) -> Any:
    """A JSON value where a measurement should be: often a plausible one, often not."""
    return rng.choice(
        [
            rng.randint(0, 60),
            rng.randint(-5, 2_000_000),
            2**62,
            round(rng.uniform(0, 120), 1),
            rng.uniform(-10, 1e10),
            -0.0,
            1e300,
            True,
            False,
            None,
            "12",
            [],
            {"a": 1},
        ]
    )


def odd_events(rng: random.Random, n: int) -> list[Json]:
    out = []
    for _ in range(n):
        ts = BASE + rng.uniform(0, 5 * H)
        kind = rng.randrange(3)
        if kind == 0:
            counts = {
                rng.choice(["in", "out", "up"]): {rng.choice(["person", "car", "bus"]): odd(rng) for _ in range(2)}
                if rng.random() < 0.8
                else odd(rng)
                for _ in range(2)
            }
            start = rng.choice([ts - ts % 60, odd(rng)])
            out.append(
                crossings(ts, start, rng.choice(["a", "b", "", 5, None]), counts if rng.random() < 0.9 else odd(rng))
            )
        elif kind == 1:
            out.append(air(ts, odd(rng), odd(rng), odd(rng)))
        else:
            out.append(speed(ts, odd(rng), odd(rng)))
    return out


async def test_migration_5_builds_the_rollups_ingest_would_have(database_url: str, tmp_path: Any) -> None:
    """The backfill's SQL follows the same rules as ingest's Python, odd values included."""
    rx = await start_receiver(database_url, tmp_path / "media")
    try:
        await rx.add_pole("pole-1")
        await rx.add_pole("pole-2")
        hour = BASE + 5 * H
        mixed = [
            crossings(hour + H + 1, hour + H - 60, "a", {"in": {"person": 3, "car": 1}, "out": {"person": 0}}),
            crossings(hour + 61, float(hour), "a", {"in": {"person": 2.0, "dog": True, "cat": None, "bus": 1_000_001}}),
            crossings(hour + 62, 1e300, "b", {"in": {"person": 1}}),  # period start out of range: its ts
            crossings(hour + 63, hour, "c", [{"in": 1}]),
            crossings(hour + 64, hour, "c", {"in": [1, 2], "out": "x", "up": {"p": 1000000}}),
            air(hour + 1, 12.5, 20, 59),
            air(hour + 2, 7, 9.25, 0),
            air(hour + 3, -1.0, 9.0, 1),
            air(hour + 4, 3.0, True, 1),
            air(hour + 5, 3.0, 4.0, 2.5),
            air(hour + 6, 1e300, 4.0, 2),
            speed(hour + 7, 48.95, True),
            speed(hour + 8, 49, False),
            speed(hour + 9, 0.04, False),
            speed(hour + 10, 999.99, True),
            speed(hour + 11, 1000, True),
            speed(hour + 12, -3.0, False),
            speed(hour + 13, None, False),
            ev(hour + 14, "speed", "telemetry", speed_kmh=60.0, over_limit=1),
            ev(3599.9999999999995, "presence"),
            ev(BASE + DAY - 0.001, "presence"),
        ]
        await send(rx, "pole-1", mixed)
        await send(rx, "pole-2", [ev(BASE + 3, "presence"), air(BASE + 7, 1, 2, 3), speed(BASE + 9, 51.5, True)])
        await send(rx, "pole-2", odd_events(random.Random(3), 400))
        ingested = await rollups(database_url)
    finally:
        await stop_receiver(rx)
    assert ingested["rollup_speed"], "the events above do reach the rollups"
    await rebuild_by_migration_5(database_url)
    backfilled = await rollups(database_url)
    assert close_enough(ingested, backfilled), (ingested, backfilled)


async def test_concurrent_batches_and_their_replays_count_once(receiver: RunningReceiver, reader: str) -> None:
    """Batches of several poles at once, each also sent twice at once: every event counts once (on
    PostgreSQL the receiver's pool serves them concurrently, sharing the fleet's rows)."""
    poles = ["pole-1", "pole-2", "pole-3", "pole-4"]
    for pole in poles[2:]:
        await receiver.add_pole(pole)
    bodies = []
    for n, pole in enumerate(poles):
        for b in range(3):
            events = [
                speed(BASE + 9 * H + i, 40.0 + i, i % 2 == 0) if i % 3 else ev(BASE + 9 * H + 60 * i)
                for i in range(n + b + 2)
            ]
            for seq, e in enumerate(events, 1):
                e["seq"] = seq
            bodies.append((pole, batch(pole, events), len(events)))
    sends = [post(receiver.url, body, receiver.tokens[pole]) for pole, body, _ in bodies for _ in range(2)]
    replies = await asyncio.gather(*sends)
    assert all(status == 200 for status, _ in replies)
    expected = sum(n for _, _, n in bodies)
    assert sum(len(r["accepted"]) for _, r in replies) == expected
    window = {"since": BASE + 9 * H, "until": BASE + 10 * H}
    status, body = await get(receiver, "/v1/analytics/counts", reader, by="hour", **window)
    assert body["rows"] == [{"key": iso(BASE + 9 * H), "count": expected}]
    status, body = await get(receiver, "/v1/analytics/counts", reader, by="pole", **window)
    assert {r["key"]: r["count"] for r in body["rows"]} == {
        pole: sum(n for p, _, n in bodies if p == pole) for pole in poles
    }
    status, body = await get(receiver, "/v1/analytics/speed", reader, **window)
    speeds = sum(1 for _, _, n in bodies for i in range(n) if i % 3)
    assert sum(r["count"] for r in body["rows"]) == speeds


async def test_a_batch_cancelled_anywhere_leaves_rollups_matching_its_events(database_url: str) -> None:
    """Cancelled at each await point in turn (an MQTT handler whose broker went): the events and
    their rollups are both stored or neither; stored again, each counts once."""
    store = await open_store(database_url)
    try:
        await store.add_token("0" * 64, "pole", "pole-1", None)
        total = 0
        # Cancelled after n turns of the loop, then (the statements run on the connection's thread)
        # after n fractions of a millisecond, so that cancellations also land while a statement runs.
        for steps in range(60):
            at = BASE + 60 * steps
            events = [WireEvent.model_validate(e) for e in (ev(at), speed(at + 1, 50, False))]
            task = asyncio.ensure_future(store.insert_batch("pole-1", "b", events, None, time.time()))
            if steps < 30:
                for _ in range(steps):
                    await asyncio.sleep(0)
            else:
                await asyncio.sleep((steps - 30) * 0.0002)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.insert_batch("pole-1", "b", events, None, time.time())
            total += len(events)
        window = Window(BASE, BASE + DAY)
        assert await store.analytics_counts(CountsQuery(window, "pole")) == [("pole-1", total)]
        assert await store.analytics_counts(CountsQuery(window, "day")) == [(BASE, total)]
        (row,) = await store.analytics_speed(window, 10)
        assert row.count == total // 2
    finally:
        await store.close()
