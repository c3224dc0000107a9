"""Bad input to the receiver is a 4xx naming what was wrong, the same on both backends: never a 500."""

from __future__ import annotations

import gzip
import time

import aiohttp
import pytest
import uuid_utils

from sync.protocol import encode_batch
from tests.conftest import RunningReceiver

BAD_QUERIES = [
    ({"cursor": str(2**63)}, "cursor"),
    ({"cursor": str(2**64 + 5)}, "cursor"),
    ({"cursor": "-1"}, "cursor"),
    ({"limit": str(2**70)}, "limit"),
    ({"pole": "pole\u00001"}, "pole"),
    ({"type": "a\u0000"}, "type"),
    ({"until": "nan"}, "until"),
    ({"since": "NaN"}, "since"),
    ({"since": "inf"}, "since"),
    ({"until": "1e400"}, "until"),
    ({"since": "soon"}, "since"),
    ({"pole": "p" * 300}, "pole"),
]


@pytest.mark.parametrize("params, name", BAD_QUERIES, ids=[f"{n}={list(p.values())[0][:20]!r}" for p, n in BAD_QUERIES])
async def test_bad_query_parameters_are_a_400_naming_the_parameter(
    receiver: RunningReceiver, params: dict[str, str], name: str
) -> None:
    reader = await receiver.add_reader()
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {reader}"}) as s,
        s.get(receiver.url + "/v1/events", params=params) as r,
    ):
        body = await r.json(content_type=None)
        assert r.status == 400, body
        assert body["error"].startswith(f"{name}: "), body


async def test_a_good_cursor_at_the_top_of_the_range_is_an_empty_page(receiver: RunningReceiver) -> None:
    reader = await receiver.add_reader()
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {reader}"}) as s,
        s.get(receiver.url + "/v1/events", params={"cursor": str(2**63 - 1), "until": "1e300"}) as r,
    ):
        assert r.status == 200
        assert await r.json() == {"events": [], "next_cursor": None}


def _raw_batch(events_json: str) -> bytes:
    return gzip.compress(encode_batch("pole-1", str(uuid_utils.uuid7()), time.time(), [events_json], None))


@pytest.mark.parametrize("depth", [300, 2000], ids=["deeper than orjson writes", "deeper than orjson reads"])
async def test_deeply_nested_json_is_a_400(receiver: RunningReceiver, depth: int) -> None:
    body = (
        f'{{"id":"{uuid_utils.uuid7()}","seq":1,"ts":{time.time()},"type":"x","priority":"event",'
        f'"location":null,"data":{{"d":{"[" * depth}1{"]" * depth}}},"media":[]}}'
    )
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Authorization": f"Bearer {receiver.tokens['pole-1']}",
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(receiver.url + "/v1/batches", data=_raw_batch(body), headers=headers) as r,
    ):
        reply = await r.json(content_type=None)
        assert r.status == 400, reply
    assert await receiver.all_events() == []


async def test_an_id_repeated_with_another_body_is_rejected_not_dropped(receiver: RunningReceiver) -> None:
    import orjson

    first = {
        "id": str(uuid_utils.uuid7()),
        "seq": 1,
        "ts": time.time(),
        "type": "reading",
        "priority": "event",
        "location": None,
        "data": {"v": 1},
        "media": [],
    }
    other = {**first, "data": {"v": 2}}
    fine = {**first, "id": str(uuid_utils.uuid7()), "seq": 2}
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Authorization": f"Bearer {receiver.tokens['pole-1']}",
    }

    async def send(*events: dict[str, object]) -> tuple[int, dict[str, object]]:
        bodies = [orjson.dumps(e).decode() for e in events]
        doc = gzip.compress(encode_batch("pole-1", str(uuid_utils.uuid7()), time.time(), bodies, None))
        async with aiohttp.ClientSession() as s, s.post(receiver.url + "/v1/batches", data=doc, headers=headers) as r:
            return r.status, await r.json(content_type=None)

    status, reply = await send(first, fine, other)
    assert status == 400, reply
    assert reply["rejected"] == [{"id": first["id"], "reason": "id: repeated in this batch with a different body"}]
    assert await receiver.all_events() == []
    status, reply = await send(first, fine, first)
    assert status == 200 and reply["accepted"] == [first["id"], fine["id"]], "the same body twice is one event"


async def test_readiness_says_unavailable_without_the_database_error(
    receiver: RunningReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from receiver.store.base import StoreError

    async def down() -> None:
        raise StoreError('connection to server at "db.internal" (10.1.2.3), port 5432 failed: FATAL: role "rx"')

    monkeypatch.setattr(receiver.store, "schema_behind", down)
    async with aiohttp.ClientSession() as s, s.get(receiver.url + "/health/ready") as r:
        assert r.status == 503
        body = await r.text()
    assert "unavailable" in body
    for detail in ("db.internal", "10.1.2.3", "5432", "role", "FATAL"):
        assert detail not in body, body


async def test_large_floats_come_back_as_the_same_floats(receiver: RunningReceiver) -> None:
    """jsonb keeps numbers as decimals: 6.006290159228115e+16 came back as an integer of another value."""
    import orjson

    data = {"f": 6.006290159228115e16, "g": 1e300, "h": -1e16, "i": 10**16, "j": 1.5e-7}
    event = {
        "id": str(uuid_utils.uuid7()),
        "seq": 1,
        "ts": time.time(),
        "type": "reading",
        "priority": "event",
        "location": None,
        "data": data,
        "media": [],
    }
    doc = gzip.compress(
        encode_batch("pole-1", str(uuid_utils.uuid7()), time.time(), [orjson.dumps(event).decode()], None)
    )
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Authorization": f"Bearer {receiver.tokens['pole-1']}",
    }
    async with aiohttp.ClientSession() as s, s.post(receiver.url + "/v1/batches", data=doc, headers=headers) as r:
        assert r.status == 200
    (stored,) = await receiver.all_events()
    assert stored["data"] == data
    assert {k: type(v) for k, v in stored["data"].items()} == {k: type(v) for k, v in data.items()}
