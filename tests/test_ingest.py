"""The pole's local ingest API over real HTTP, on a real outbox file."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.web.ingest import make_ingest_handler
from gateway.web.server import HttpConfig, LocalServer
from sync.events import Location, NewEvent, Priority
from sync.outbox import Outbox, OutboxConfig

HERE = Location(52.0, 4.0, "config")


@pytest.fixture
async def pole(tmp_path: Path) -> AsyncIterator[tuple[str, Outbox]]:
    box = await Outbox.open(tmp_path / "o.db", OutboxConfig(max_bytes=60_000))
    server = LocalServer(HttpConfig(port=0, max_body_bytes=200_000, max_events_per_request=50))
    server.app.router.add_post("/v1/events", make_ingest_handler(box, lambda: HERE, 50, max_body_bytes=200_000))
    await server.start()
    yield f"http://127.0.0.1:{server.port}/v1/events", box
    await server.stop()
    await box.close()


async def send(
    url: str, payload: Any = None, data: bytes | None = None, ctype: str = "application/json"
) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        kwargs: dict[str, Any] = (
            {"json": payload} if data is None else {"data": data, "headers": {"Content-Type": ctype}}
        )
        async with s.post(url, **kwargs) as r:
            return r.status, await r.json()


async def test_one_event_is_committed_before_201(pole: tuple[str, Outbox]) -> None:
    url, box = pole
    ts = float(int(time.time()) - 60)
    status, body = await send(url, {"type": "door_open", "data": {"cabinet": 2}, "priority": "alert", "ts": ts})
    assert status == 201
    (record,) = await box.next_batch(10, 10**6)
    assert body["ids"] == [record.id] and body["seqs"] == [record.seq]
    assert record.priority == Priority.ALERT
    assert '"location":{"lat":52.0,"lon":4.0,"source":"config"}' in record.body and f'"ts":{ts}' in record.body


async def test_a_list(pole: tuple[str, Outbox]) -> None:
    url, box = pole
    status, body = await send(url, [{"type": "reading", "data": {"i": i}} for i in range(20)])
    assert status == 201 and len(body["ids"]) == 20 == box.backlog


@pytest.mark.parametrize(
    "payload, where",
    [
        ([{"type": "ok"}, {"type": "ok", "priority": "urgent"}], "events[1].priority"),
        ({"type": "Has Spaces"}, "type"),
        ({"type": "ok", "data": [1, 2]}, "data"),
        ({"type": "ok", "colour": "red"}, "colour"),
        ({"type": "ok", "ts": -5}, "ts"),
        ({"data": {}}, "type"),
    ],
)
async def test_invalid_input_names_the_field(pole: tuple[str, Outbox], payload: Any, where: str) -> None:
    url, box = pole
    status, body = await send(url, payload)
    assert status == 400
    assert body["error"].startswith(f"{where}: "), body
    assert box.backlog == 0


async def test_malformed_json_and_wrong_content_type(pole: tuple[str, Outbox]) -> None:
    url, _ = pole
    status, body = await send(url, data=b'{"type": ')
    assert status == 400 and "not valid JSON" in body["error"]
    status, body = await send(url, data=b"type=x", ctype="application/x-www-form-urlencoded")
    assert status == 415


async def test_oversize(pole: tuple[str, Outbox]) -> None:
    url, box = pole
    status, body = await send(url, [{"type": "x"}] * 51)
    assert status == 413 and "at most 50" in body["error"]
    status, body = await send(url, {"type": "x", "data": {"blob": "z" * 300_000}})
    assert status == 413
    assert box.backlog == 0


async def test_507_when_the_outbox_cannot_take_that_priority(pole: tuple[str, Outbox]) -> None:
    url, box = pole
    for _ in range(60):  # fill the 60 KB cap with alerts, which nothing may displace
        try:
            await box.put(NewEvent("alarm", {"pad": "a" * 900}, Priority.ALERT))
        except Exception:
            break
    status, body = await send(url, {"type": "snapshot_meta", "priority": "media", "data": {"pad": "m" * 900}})
    assert status == 507 and "outbox full" in body["error"]
    assert body["ids"] == []
