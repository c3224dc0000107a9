"""Property-based: any JSON document, any event, through the pole's ingest API and the receiver's
batch endpoint ends in a 2xx or a 4xx, never a 5xx or a crash, and what was accepted reads back
unchanged (from the outbox on the pole, from the database at the receiver, both backends)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as observe
from hypothesis import strategies as st

from gateway.web.ingest import make_ingest_handler
from gateway.web.server import HttpConfig, LocalServer
from receiver.store.base import EventQuery
from sync.outbox import Outbox, OutboxConfig
from tests.conftest import RunningReceiver, pg_schema, start_receiver, stop_receiver

T = TypeVar("T")
SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


class Loop:
    """An event loop in a thread of its own: the servers live there, hypothesis calls in."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` about four times in five: enough valid input to test what is accepted, and the rest."""
    return st.integers(min_value=0, max_value=4).flatmap(lambda n: good if n else bad)


no_nul = st.characters(blacklist_characters="\x00")
storable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=no_nul, max_size=12),
)
unstorable_scalars = st.sampled_from(["\u0000", "a\u0000", 2**63, -(2**63) - 1, 2**64, 10**30])
storable_values = st.recursive(
    storable_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(alphabet=no_nul, max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
any_values = st.recursive(
    mostly(storable_scalars, unstorable_scalars),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
deep = st.integers(min_value=20, max_value=400).map(lambda n: json.loads("[" * n + "]" * n))
storable_data = st.dictionaries(st.text(alphabet=no_nul, max_size=8), storable_values, max_size=6)
any_data = st.one_of(st.dictionaries(st.text(max_size=8), any_values | deep, max_size=6), any_values)
NOW = time.time()
window = st.floats(min_value=NOW - 20 * 86400, max_value=NOW + 3600)
any_ts = st.none() | window | st.floats() | st.integers(min_value=-(2**65), max_value=2**65) | st.text(max_size=5)
priorities = st.sampled_from(["alert", "event", "telemetry", "media"])
ingest_events = mostly(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["reading", "door_open"]), "data": storable_data},
        optional={"priority": priorities, "ts": window},
    ),
    st.fixed_dictionaries(
        {"type": st.text(max_size=6) | st.just("reading"), "data": any_data},
        optional={"priority": priorities | st.text(max_size=6), "ts": any_ts, "extra": any_values},
    ),
)
documents = mostly(ingest_events | st.lists(ingest_events, min_size=1, max_size=3), any_values)


def encode(doc: Any) -> bytes:
    """JSON text for any document, integers of any size and NaN included (json, not orjson)."""
    return json.dumps(doc).encode()


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values: numbers by value (JSON has one number type, and PostgreSQL's jsonb
    writes the float 1e16 back as 10000000000000000), everything else by type and value."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.close()


@pytest.fixture(scope="module")
def pole(loop: Loop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Outbox]]:
    path = tmp_path_factory.mktemp("pole") / "outbox.db"

    async def start() -> tuple[LocalServer, Outbox]:
        # Inputs, not card wear, are tested here: no commit window to wait for on every example.
        box = await Outbox.open(path, OutboxConfig(commit_interval_ms=0))
        server = LocalServer(HttpConfig(port=0))
        server.app.router.add_post("/v1/events", make_ingest_handler(box, lambda: None, 1000))
        await server.start()
        return server, box

    server, box = loop.run(start())
    yield f"http://127.0.0.1:{server.port}/v1/events", box

    async def stop() -> None:
        await server.stop()
        await box.close()

    loop.run(stop())


async def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        return r.status, await r.json(content_type=None)


@SETTINGS
@given(doc=documents)
def test_ingest_answers_2xx_or_4xx_and_keeps_what_it_accepts(loop: Loop, pole: tuple[str, Outbox], doc: Any) -> None:
    url, box = pole
    status, reply = loop.run(post(url, encode(doc), {"Content-Type": "application/json"}))
    observe(f"status {status}")
    assert 200 <= status < 500, (status, reply)
    if status != 201:
        return
    submitted = doc if isinstance(doc, list) else [doc]
    records = {r.id: orjson.loads(r.body) for r in loop.run(box.next_batch(10_000, 10**9))}
    try:
        for event_id, event in zip(reply["ids"], submitted, strict=True):
            stored = records[event_id]
            assert same(stored["data"], event.get("data", {})), (stored["data"], event)
            assert stored["type"] == event["type"] and stored["priority"] == event.get("priority", "event")
            if event.get("ts") is not None:
                assert stored["ts"] == event["ts"]
    finally:
        loop.run(box.ack(list(records)))


@SETTINGS
@given(body=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_ingest_takes_any_bytes(loop: Loop, pole: tuple[str, Outbox], body: bytes) -> None:
    url, box = pole
    status, _ = loop.run(post(url, body, {"Content-Type": "application/json"}))
    assert 400 <= status < 500
    assert box.backlog == 0


locations = st.none() | st.fixed_dictionaries(
    {
        "lat": st.floats(min_value=-90, max_value=90),
        "lon": st.floats(min_value=-180, max_value=180),
        "source": st.sampled_from(["gps", "config", None]),
    }
)
wire_events = mostly(
    st.fixed_dictionaries(
        {
            "id": st.uuids(version=4).map(str),
            "seq": st.integers(min_value=1, max_value=2**63 - 1),
            "ts": window,
            "type": st.sampled_from(["reading", "presence"]),
            "priority": priorities,
            "location": locations,
            "data": storable_data,
            "media": st.just([]),
        }
    ),
    st.fixed_dictionaries(
        {
            "id": mostly(st.uuids(version=4).map(str), st.text(max_size=8)),
            "seq": st.integers(min_value=-5, max_value=2**65) | st.sampled_from([2**63 - 1, 2**63]),
            "ts": any_ts,
            "type": st.sampled_from(["reading", "X", "", "a" * 65]),
            "priority": priorities | st.just("nope"),
            "location": locations
            | st.fixed_dictionaries({"lat": st.floats(), "lon": st.floats(), "source": st.just("g\u0000")}),
            "data": any_data,
            "media": st.just([]) | st.lists(st.text(max_size=64), max_size=2),
        },
        optional={"extra": any_values},
    ),
)
batches = mostly(
    st.fixed_dictionaries(
        {
            "schema_version": st.just(1),
            "pole_id": st.just("pole-1"),
            "batch_id": st.uuids().map(str),
            "sent_at": st.floats(allow_nan=False, allow_infinity=False),
            "events": st.lists(mostly(wire_events, any_values), max_size=3),
            "status": st.none() | st.dictionaries(st.text(max_size=8), any_values, max_size=3),
        }
    ),
    any_values,
)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def rx(
    loop: Loop, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningReceiver]:
    stack = contextlib.AsyncExitStack()

    async def start() -> RunningReceiver:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('rx') / 'rx.db'}"
        else:
            url = await stack.enter_async_context(pg_schema())
        running = await start_receiver(url, tmp_path_factory.mktemp("media"))
        await running.add_pole("pole-1")
        return running

    running = loop.run(start())
    yield running

    async def stop() -> None:
        await stop_receiver(running)
        await stack.aclose()

    loop.run(stop())


@SETTINGS
@given(doc=batches)
def test_receiver_answers_2xx_or_4xx_and_stores_what_it_accepts(loop: Loop, rx: RunningReceiver, doc: Any) -> None:
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Authorization": f"Bearer {rx.tokens['pole-1']}",
    }
    if isinstance(doc, dict) and isinstance(doc.get("events"), list):
        for event in doc["events"]:  # fresh ids: a replayed id would be a duplicate, not a new store
            if isinstance(event, dict) and isinstance(event.get("id"), str) and len(event["id"]) == 36:
                event["id"] = str(uuid.uuid4())
    status, reply = loop.run(post(rx.url + "/v1/batches", gzip.compress(encode(doc)), headers))
    observe(f"status {status}")
    assert 200 <= status < 500, (status, reply)
    if status != 200:
        return
    observe(f"accepted {min(len(reply['accepted']), 2)}+")
    sent = {e["id"]: e for e in doc["events"]}
    stored = {e["id"]: e for e in loop.run(stored_events(rx, reply["accepted"]))}
    assert set(stored) == set(reply["accepted"])
    for event_id, event in stored.items():
        original = sent[event_id]
        for key in ("seq", "type", "priority", "location", "data", "media"):
            assert same(event[key], original[key]), (key, event[key], original[key])
        assert event["ts"] == original["ts"]


async def stored_events(rx: RunningReceiver, ids: list[str]) -> list[dict[str, Any]]:
    wanted = set(ids)
    page = await rx.store.query_events(EventQuery(pole_id="pole-1", limit=1000, after=0))
    found = [e for e in page.events if e["id"] in wanted]
    cursor = page.next_cursor
    while cursor is not None:
        page = await rx.store.query_events(EventQuery(pole_id="pole-1", limit=1000, after=cursor))
        found += [e for e in page.events if e["id"] in wanted]
        cursor = page.next_cursor
    return found
