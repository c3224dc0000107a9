"""No poison event: what a receiver cannot store is refused where it enters (the pole's ingest, every
producer through the outbox, the receiver's batch parser), and a database that refuses one event
costs that event alone, never the queue behind it. Real pole processes, both receiver backends."""

from __future__ import annotations

import asyncio
import gzip
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import uuid_utils

from receiver.store.analytics import CountsQuery, Window
from sync.events import NewEvent
from sync.outbox import Outbox
from sync.protocol import WireEvent, encode_batch
from tests.conftest import RunningReceiver, start_receiver, stop_receiver
from tests.helpers.pole import PoleProcess, free_port


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels - 1):
        value = [value]
    return value


# (name, ingest document, the field a 400 must name)
UNSTORABLE: list[tuple[str, dict[str, Any], str]] = [
    ("nul in a value", {"type": "reading", "data": {"a": "x\u0000y"}}, "data.a"),
    ("nul in a key", {"type": "reading", "data": {"a\u0000b": 1}}, "data"),
    ("nul deep inside", {"type": "reading", "data": {"list": [{"k": ["ok", "\u0000"]}]}}, "data.list[0].k[1]"),
    ("int of 2**63", {"type": "reading", "data": {"n": 2**63}}, "data.n"),
    ("int of 2**64-1", {"type": "reading", "data": {"n": 2**64 - 1}}, "data.n"),
    ("int below -2**63", {"type": "reading", "data": {"n": -(2**63) - 1}}, "data.n"),
    ("int beyond 64 bits", {"type": "reading", "data": {"n": 10**30}}, "data.n"),
    ("ts far in the future", {"type": "reading", "ts": 1e20}, "ts"),
    ("nested too deep", {"type": "reading", "data": {"d": deep(40)}}, "data.d"),
    ("nested deeper than orjson writes", {"type": "reading", "data": {"d": deep(300)}}, "data.d"),
]


def wire_event(seq: int, **data: Any) -> dict[str, Any]:
    return {
        "id": str(uuid_utils.uuid7()),
        "seq": seq,
        "ts": time.time(),
        "type": "reading",
        "priority": "event",
        "location": None,
        "data": data or {"i": seq},
        "media": [],
    }


async def post_batch(rx: RunningReceiver, events: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    bodies = [orjson.dumps(e).decode() for e in events]
    doc = encode_batch("pole-1", str(uuid_utils.uuid7()), time.time(), bodies, None)
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Authorization": f"Bearer {rx.tokens['pole-1']}",
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(rx.url + "/v1/batches", data=gzip.compress(doc), headers=headers) as r,
    ):
        return r.status, await r.json(content_type=None)


def raw_json_event(seq_text: str, data_json: str, ts_text: str = "", location_json: str = "null") -> str:
    """An event body as text, so that values orjson would refuse to write (2**64) can be sent."""
    return (
        f'{{"id":"{uuid_utils.uuid7()}","seq":{seq_text},"ts":{ts_text or time.time()},"type":"reading",'
        f'"priority":"event","location":{location_json},"data":{data_json},"media":[]}}'
    )


async def test_receiver_rejects_unstorable_events_by_id_and_stores_the_rest(receiver: RunningReceiver) -> None:
    good = [wire_event(1), wire_event(2)]
    bad_bodies = {
        "nul value": raw_json_event("3", '{"a":"x\\u0000y"}'),
        "nul key": raw_json_event("4", '{"a\\u0000b":1}'),
        "seq 2**63": raw_json_event(str(2**63), "{}"),
        "seq 2**64-1": raw_json_event(str(2**64 - 1), "{}"),
        "data int 2**63": raw_json_event("5", f'{{"n":{2**63}}}'),
        "data int 2**70": raw_json_event("6", f'{{"n":{2**70}}}'),
        "ts 1e20": raw_json_event("7", "{}", ts_text="1e20"),
        "too deep": raw_json_event("8", "[" * 40 + "1" + "]" * 40),
        "deeper than orjson writes": raw_json_event("9", '{"d":' + "[" * 300 + "1" + "]" * 300 + "}"),
        "nul in location source": raw_json_event("10", "{}", location_json='{"lat":1.0,"lon":2.0,"source":"g\\u0000"}'),
    }
    bodies = [orjson.dumps(e).decode() for e in good] + list(bad_bodies.values())
    doc = encode_batch("pole-1", str(uuid_utils.uuid7()), time.time(), bodies, None)
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Authorization": f"Bearer {receiver.tokens['pole-1']}",
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(receiver.url + "/v1/batches", data=gzip.compress(doc), headers=headers) as r,
    ):
        status, reply = r.status, await r.json(content_type=None)
    assert status == 400, reply
    ids = {name: orjson.loads(body)["id"] for name, body in bad_bodies.items()}
    reasons = {r["id"]: r["reason"] for r in reply["rejected"]}
    assert set(reasons) == set(ids.values()), reply
    assert reasons[ids["nul value"]].startswith("data.a: ")
    assert reasons[ids["nul key"]].startswith("data: ") and "NUL" in reasons[ids["nul key"]]
    assert reasons[ids["seq 2**63"]].startswith("seq: ")
    assert reasons[ids["seq 2**64-1"]].startswith("seq: ")
    assert reasons[ids["data int 2**63"]].startswith("data.n: ")
    assert reasons[ids["ts 1e20"]].startswith("ts: ")
    assert reasons[ids["too deep"]].startswith("data")
    assert reasons[ids["deeper than orjson writes"]].startswith("data.d")
    assert reasons[ids["nul in location source"]].startswith("location.source: ")
    # What the pole does next: dead-letter the named ones, send the rest again.
    status, reply = await post_batch(receiver, good)
    assert status == 200 and sorted(reply["accepted"]) == sorted(e["id"] for e in good)


async def test_store_turns_a_data_error_into_a_rejection_of_that_event(receiver: RunningReceiver) -> None:
    """Defence in depth: an event the parser let through but the database refuses is rejected alone."""
    good = [WireEvent.model_validate(wire_event(i)) for i in (1, 2, 3)]
    nul = WireEvent.model_construct(**{**wire_event(4), "data": {"a": "x\u0000y"}})
    big = WireEvent.model_construct(**{**wire_event(5), "seq": 2**63})
    events = [good[0], nul, good[1], big, good[2]]
    # SQLite keeps data as JSON text, where a NUL is an escape like any other; PostgreSQL's jsonb refuses it.
    refused = {nul.id, big.id} if receiver.store.backend == "postgresql" else {big.id}
    stored = [e.id for e in events if e.id not in refused]
    result = await receiver.store.insert_batch("pole-1", str(uuid_utils.uuid7()), events, None, time.time())
    assert result.accepted == stored and result.duplicates == []
    assert {r.id for r in result.rejected} == refused
    assert all(r.reason.startswith("the database refused this event (") for r in result.rejected)
    assert sorted(e["id"] for e in await receiver.all_events()) == sorted(stored)
    (pole,) = await receiver.store.poles()
    assert pole.max_seq == 4 if nul.id in stored else pole.max_seq == 3, "a refused seq does not count"
    assert pole.events_total == len(stored)
    hour = int(time.time() // 3600 * 3600)
    window = Window(hour - 3600, hour + 7200)  # the events' hour, whichever side of it the test ran
    assert await receiver.store.analytics_counts(CountsQuery(window, "type")) == [("reading", len(stored))]
    # Replayed: the stored ones are duplicates, the others refused again, nothing raised or counted twice.
    again = await receiver.store.insert_batch("pole-1", str(uuid_utils.uuid7()), events, None, time.time())
    assert again.duplicates == stored and {r.id for r in again.rejected} == refused
    assert await receiver.store.analytics_counts(CountsQuery(window, "type")) == [("reading", len(stored))]
    assert (await receiver.store.poles())[0].events_total == len(stored)


@pytest.mark.parametrize("name, doc, field", UNSTORABLE, ids=[u[0] for u in UNSTORABLE])
async def test_outbox_refuses_for_every_producer(tmp_path: Path, name: str, doc: dict[str, Any], field: str) -> None:
    box = await Outbox.open(tmp_path / "o.db")
    try:
        with pytest.raises(ValueError) as caught:
            await box.put(NewEvent(doc["type"], doc.get("data", {}), ts=doc.get("ts", time.time())))
        assert str(caught.value).startswith(field), caught.value
        assert box.backlog == 0
    finally:
        await box.close()


def plant_poison(outbox_path: Path) -> list[str]:
    """Rows an older pole version could have committed: written straight into the outbox file."""
    ids = []
    db = sqlite3.connect(outbox_path)
    try:
        top = db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        priority = 1  # event; the outbox keys a row by priority << 56 | seq (schema 2)
        for n, (seq_text, data_json) in enumerate(
            [
                ("{seq}", '{"a":"x\\u0000y"}'),
                ("{seq}", '{"k\\u0000":1}'),
                (str(2**63), "{}"),
                ("{seq}", f'{{"n":{2**63}}}'),
            ]
        ):
            seq = top + 1 + n
            body = raw_json_event(seq_text.format(seq=seq), data_json)
            event_id = orjson.loads(body)["id"]
            ids.append(event_id)
            assert body.startswith(f'{{"id":"{event_id}"'), "the outbox reads the id from the body's start"
            db.execute(
                "INSERT INTO events (pos, created, size, body, media) VALUES (?, ?, ?, ?, NULL)",
                (priority << 56 | seq, time.time(), len(body), body),
            )
        db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (top + 10,))
        db.commit()
    finally:
        db.close()
    return ids


async def test_poison_in_the_queue_is_dead_lettered_and_the_rest_arrives(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    rx = await start_receiver(database_url, tmp_path / "media", port=port)
    token = await rx.add_pole("pole-1")
    pole = PoleProcess(tmp_path, f"http://127.0.0.1:{port}", token)
    outbox_path = tmp_path / "state" / "outbox.db"
    box = await Outbox.open(outbox_path)
    before = [(await box.put(NewEvent("reading", {"i": i}))).id for i in range(3)]
    await box.close()
    poison = plant_poison(outbox_path)
    await asyncio.to_thread(pole.start)
    try:
        after = []
        async with aiohttp.ClientSession(headers=pole.headers) as s:
            for name, doc, field in UNSTORABLE:
                async with s.post(pole.url + "/v1/events", data=orjson_text(doc), headers=JSON) as r:
                    body = await r.json()
                    assert r.status == 400, (name, body)
                    assert body["error"].startswith(field), (name, body)
            for i in range(3):
                async with s.post(pole.url + "/v1/events", json={"type": "reading", "data": {"i": 10 + i}}) as r:
                    assert r.status == 201
                    after += (await r.json())["ids"]

        deadline = time.monotonic() + 30
        while {e["id"] for e in await rx.all_events()} != set(before + after):
            assert time.monotonic() < deadline, f"the queue is blocked; log tail:\n{pole.log.read_text()[-3000:]}"
            await asyncio.sleep(0.2)
    finally:
        assert await asyncio.to_thread(pole.stop) == 0
        await stop_receiver(rx)
    box = await Outbox.open(outbox_path)
    try:
        dead = {d.id: d.reason for d in await box.dead_letters()}
        assert set(dead) == set(poison), dead
        assert box.backlog == 0
    finally:
        await box.close()


JSON = {"Content-Type": "application/json"}


def orjson_text(doc: Any) -> bytes:
    """JSON text for documents orjson cannot write (integers beyond 64 bits)."""
    import json

    return json.dumps(doc).encode()


async def test_an_unstorable_status_block_is_dropped_not_the_events(receiver: RunningReceiver) -> None:
    events = [wire_event(1), wire_event(2)]
    bodies = [orjson.dumps(e).decode() for e in events]
    status = {"software_version": "v\u0000", "uptime_s": 1.0}
    doc = encode_batch("pole-1", str(uuid_utils.uuid7()), time.time(), bodies, status)
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Authorization": f"Bearer {receiver.tokens['pole-1']}",
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(receiver.url + "/v1/batches", data=gzip.compress(doc), headers=headers) as r,
    ):
        assert r.status == 200, await r.text()
        assert sorted((await r.json())["accepted"]) == sorted(e["id"] for e in events)
    (pole,) = await receiver.store.poles()
    assert pole.status is None and pole.last_seen is not None
