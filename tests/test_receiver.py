"""The receiver over real HTTP on 127.0.0.1, against SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import uuid_utils
from prometheus_client.parser import text_string_to_metric_families

from receiver.policy import PolicyConfig
from sync.protocol import encode_batch
from tests.conftest import RunningReceiver, start_receiver, stop_receiver
from tests.test_media_checks import real_jpeg


def event(seq: int, type_: str = "presence", priority: str = "event", **data: Any) -> dict[str, Any]:
    return {
        "id": str(uuid_utils.uuid7()),
        "seq": seq,
        "ts": time.time(),
        "type": type_,
        "priority": priority,
        "location": {"lat": 52.1, "lon": 4.3, "source": "config"},
        "data": data or {"people": seq},
        "media": [],
    }


def batch(pole_id: str, events: list[dict[str, Any]], status: dict[str, Any] | None = None) -> bytes:
    bodies = [orjson.dumps(e).decode() for e in events]
    return gzip.compress(encode_batch(pole_id, str(uuid_utils.uuid7()), time.time(), bodies, status))


async def post(
    url: str, body: bytes, token: str | None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    h = {"Content-Type": "application/json", "Content-Encoding": "gzip", **(headers or {})}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/batches", data=body, headers=h) as r:
        return r.status, await r.json(content_type=None)


async def stored(receiver: RunningReceiver) -> int:
    return len(await receiver.all_events())


async def test_accepts_then_reports_duplicates(receiver: RunningReceiver) -> None:
    token = receiver.tokens["pole-1"]
    events = [event(i + 1) for i in range(5)]
    body = batch("pole-1", events, {"backlog": {"event": 0}, "software_version": "t"})
    status, reply = await post(receiver.url, body, token)
    assert status == 200, reply
    assert reply["accepted"] == [e["id"] for e in events] and reply["duplicates"] == []
    assert reply["config_version"] == "0", "no remote configuration: the empty overlay's version"
    # The same events again (a reply lost on the way): all duplicates, nothing new stored.
    status, reply = await post(receiver.url, batch("pole-1", events[2:] + [event(6)]), token)
    assert status == 200
    assert reply["duplicates"] == [e["id"] for e in events[2:]] and len(reply["accepted"]) == 1
    assert await stored(receiver) == 6
    (pole,) = await receiver.store.poles()
    assert pole.pole_id == "pole-1" and pole.max_seq == 6 and pole.events_total == 6
    assert pole.status and pole.status["software_version"] == "t"


async def test_status_only_batch_is_a_heartbeat(receiver: RunningReceiver) -> None:
    status, reply = await post(receiver.url, batch("pole-1", [], {"uptime_s": 12.5}), receiver.tokens["pole-1"])
    assert status == 200 and reply["accepted"] == []
    (pole,) = await receiver.store.poles()
    assert pole.last_seen is not None and time.time() - pole.last_seen < 10
    assert pole.status == {"backlog": {}, "uptime_s": 12.5}


@pytest.mark.parametrize(
    "token_kind, status_code, reason",
    [
        (None, 401, "missing bearer token"),
        ("garbage", 401, "unknown or revoked token"),
        ("other-pole", 403, "token belongs to pole 'pole-2'"),
        ("revoked", 401, "unknown or revoked token"),
        ("reader", 403, "for a reader"),
    ],
)
async def test_authentication(receiver: RunningReceiver, token_kind: str | None, status_code: int, reason: str) -> None:
    token = {
        None: None,
        "garbage": "spt_not-a-token",
        "other-pole": await receiver.add_pole("pole-2"),
        "revoked": receiver.tokens["pole-1"],
        "reader": await receiver.add_reader(),
    }[token_kind]
    if token_kind == "revoked":
        assert await receiver.store.revoke_pole("pole-1") == 1
    status, reply = await post(receiver.url, batch("pole-1", [event(1)]), token)
    assert status == status_code
    assert reason in reply["error"]
    assert await stored(receiver) == 0


async def test_only_hashes_of_tokens_are_stored(receiver: RunningReceiver, database_url: str) -> None:
    token = receiver.tokens["pole-1"]
    info = await receiver.store.lookup_token(hashlib.sha256(token.encode()).hexdigest())
    assert info is not None and info.pole_id == "pole-1"
    assert await receiver.store.lookup_token(token) is None
    if database_url.startswith("sqlite:///"):
        raw = Path(database_url.removeprefix("sqlite:///")).read_bytes()
        assert token.encode() not in raw


BAD_BODIES: list[tuple[str, bytes, dict[str, str], int, str]] = [
    ("malformed json", gzip.compress(b'{"schema_version": 1, "pole_id": '), {}, 400, "not valid JSON"),
    ("bad gzip", b"\x1f\x8b\x08\x00garbage-not-deflate", {}, 400, "cannot be decoded"),
    ("not an object", gzip.compress(b"[1, 2, 3]"), {}, 400, "must be a JSON object"),
    ("wrong content type", gzip.compress(b"{}"), {"Content-Type": "text/plain"}, 415, "application/json"),
]


@pytest.mark.parametrize("name, body, headers, code, reason", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_bad_bodies(
    receiver: RunningReceiver, name: str, body: bytes, headers: dict[str, str], code: int, reason: str
) -> None:
    status, reply = await post(receiver.url, body, receiver.tokens["pole-1"], headers)
    assert status == code, reply
    assert reason in reply["error"]
    assert await stored(receiver) == 0


async def test_unknown_schema_version(receiver: RunningReceiver) -> None:
    doc = orjson.loads(gzip.decompress(batch("pole-1", [event(1)])))
    doc["schema_version"] = 2
    status, reply = await post(receiver.url, gzip.compress(orjson.dumps(doc)), receiver.tokens["pole-1"])
    assert status == 400 and "unsupported schema_version 2" in reply["error"]
    assert await stored(receiver) == 0


async def test_wrong_types_name_the_event_and_field(receiver: RunningReceiver) -> None:
    good, bad_seq, bad_prio = event(1), event(2), event(3)
    bad_seq["seq"] = "two"
    bad_prio["priority"] = "urgent"
    status, reply = await post(receiver.url, batch("pole-1", [good, bad_seq, bad_prio]), receiver.tokens["pole-1"])
    assert status == 400
    reasons = {r["id"]: r["reason"] for r in reply["rejected"]}
    assert set(reasons) == {bad_seq["id"], bad_prio["id"]}
    assert reasons[bad_seq["id"]].startswith("seq: ")
    assert reasons[bad_prio["id"]].startswith("priority: ")
    assert await stored(receiver) == 0, "nothing of an invalid batch is stored"


async def test_envelope_wrong_types(receiver: RunningReceiver) -> None:
    doc = orjson.loads(gzip.decompress(batch("pole-1", [event(1)])))
    doc["events"] = {"not": "a list"}
    status, reply = await post(receiver.url, gzip.compress(orjson.dumps(doc)), receiver.tokens["pole-1"])
    assert status == 400 and "events" in reply["error"]


async def test_oversized_bodies(database_url: str, tmp_path: Path) -> None:
    running = await start_receiver(database_url, tmp_path / "m", max_body_bytes=20_000, max_decompressed_bytes=200_000)
    try:
        token = await running.add_pole("pole-1")
        big = [event(i + 1, pad="x" * 1000) for i in range(300)]  # ~350 KB of JSON, compresses well
        status, reply = await post(running.url, batch("pole-1", big), token)
        assert status == 413 and "decompressed" in reply["error"]
        noisy = gzip.compress(os.urandom(100_000))  # incompressible: 100 KB on the wire
        status, reply = await post(running.url, noisy, token)
        assert status == 413
        bomb = gzip.compress(b"{" + b" " * 50_000_000 + b"}")  # 50 MB of spaces in 50 KB
        status, reply = await post(running.url, bomb, token, {})
        assert status == 413
        assert await stored(running) == 0
    finally:
        await stop_receiver(running)


async def test_policy_rejections_are_per_event(database_url: str, tmp_path: Path) -> None:
    running = await start_receiver(database_url, tmp_path / "m", policy=PolicyConfig(forbid_plate_text=True))
    try:
        token = await running.add_pole("pole-1")
        ok, plate = event(1, "plate_read", plate_policy="drop"), event(2, "plate_read", plate_text="EBY584")
        status, reply = await post(running.url, batch("pole-1", [ok, plate]), token)
        assert status == 200
        assert reply["accepted"] == [ok["id"]]
        assert reply["rejected"] == [{"id": plate["id"], "reason": reply["rejected"][0]["reason"]}]
        assert "plate_text" in reply["rejected"][0]["reason"]
        assert "EBY584" not in str(await running.all_events())
    finally:
        await stop_receiver(running)


async def test_media_upload_and_read(receiver: RunningReceiver, tmp_path: Path) -> None:
    token = receiver.tokens["pole-1"]
    jpeg = real_jpeg()
    sha = hashlib.sha256(jpeg).hexdigest()
    e = event(1, "presence")
    e["media"] = [sha]
    status, reply = await post(receiver.url, batch("pole-1", [e]), token)
    assert status == 200 and reply["missing_media"] == [sha]

    auth = {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"}
    async with aiohttp.ClientSession() as s:
        async with s.put(f"{receiver.url}/v1/media/{sha}", data=b"\xff\xd8\xff" + b"x", headers=auth) as r:
            assert r.status == 400 and "sha256" in (await r.json())["error"]
        async with s.put(f"{receiver.url}/v1/media/{sha}", data=b"GIF89a", headers=auth) as r:
            assert r.status == 415
        async with s.put(f"{receiver.url}/v1/media/{sha}", data=jpeg, headers=auth) as r:
            assert r.status == 201
        async with s.put(f"{receiver.url}/v1/media/{sha}", data=jpeg, headers=auth) as r:
            assert r.status == 200, "idempotent"
        reader = await receiver.add_reader()
        async with s.get(f"{receiver.url}/v1/media/{sha}", headers={"Authorization": f"Bearer {reader}"}) as r:
            assert r.status == 200 and await r.read() == jpeg
        async with s.get(f"{receiver.url}/v1/media/{sha}", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 403, "poles write media, they do not read it"
    status, reply = await post(receiver.url, batch("pole-1", [e]), token)
    assert reply["duplicates"] == [e["id"]] and reply["missing_media"] == []


async def test_events_query_filters_and_cursor(receiver: RunningReceiver) -> None:
    token = receiver.tokens["pole-1"]
    await receiver.add_pole("pole-2")
    t0 = time.time()
    events = [event(i + 1, "presence" if i % 2 else "count") for i in range(25)]
    for i, e in enumerate(events):
        e["ts"] = t0 + i
    await post(receiver.url, batch("pole-1", events), token)
    await post(receiver.url, batch("pole-2", [event(1)]), receiver.tokens["pole-2"])
    reader = await receiver.add_reader()
    h = {"Authorization": f"Bearer {reader}"}
    async with aiohttp.ClientSession(headers=h) as s:
        seen: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"pole": "pole-1", "limit": "7"} | ({"cursor": str(cursor)} if cursor else {})
            async with s.get(receiver.url + "/v1/events", params=params) as r:
                assert r.status == 200
                page = await r.json()
            seen += page["events"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [e["id"] for e in seen] == [e["id"] for e in events]
        assert seen[0]["location"] == {"lat": 52.1, "lon": 4.3, "source": "config"}
        async with s.get(
            receiver.url + "/v1/events", params={"type": "count", "since": str(t0 + 10), "until": str(t0 + 20)}
        ) as r:
            got = (await r.json())["events"]
        assert [e["seq"] for e in got] == [11, 13, 15, 17, 19]
        async with s.get(receiver.url + "/v1/events", params={"limit": "0"}) as r:
            assert r.status == 400
    async with (
        aiohttp.ClientSession() as s,
        s.get(receiver.url + "/v1/events", headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        assert r.status == 403


async def test_health_and_metrics(receiver: RunningReceiver) -> None:
    await post(receiver.url, batch("pole-1", [event(1), event(2)]), receiver.tokens["pole-1"])
    await post(receiver.url, batch("pole-1", [event(1)]), "spt_wrong")
    async with aiohttp.ClientSession() as s:
        async with s.get(receiver.url + "/health") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(receiver.url + "/metrics") as r:
            text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("smartpole_receiver_events_total", (("outcome", "accepted"),))] == 2
    assert samples[("smartpole_receiver_batches_total", (("result", "unauthorized"),))] == 1
    assert samples[("smartpole_receiver_poles_online", ())] == 1
    assert families["smartpole_receiver_request_seconds"].type == "histogram"
    assert "process_cpu_seconds" in families
