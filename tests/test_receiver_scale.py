"""Scale-out: ``--workers`` processes on one port, readiness apart from liveness, draining on SIGTERM.

Real receiver processes on 127.0.0.1 with the real PostgreSQL; the readiness of a schema that is
behind is checked on both backends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import asyncpg
import orjson
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client.parser import text_string_to_metric_families

from receiver.auth import new_token
from receiver.store.factory import open_store
from sync.protocol import MAC_PROPERTY, batches_topic, message_mac, replies_topic, token_hash
from tests.conftest import RunningReceiver, pg_schema, start_receiver, stop_receiver
from tests.helpers.pole import free_port
from tests.mqtt_rig import eventually, rig
from tests.test_receiver import batch, event, post


def write_config(path: Path, port: int, database_url: str, **receiver: Any) -> Path:
    lines = ["[receiver]", f"port = {port}", f"database_url = {json.dumps(database_url)}"]
    lines.append(f"media_dir = {json.dumps(str(path.parent / 'media'))}")
    lines += [f"{key} = {json.dumps(value)}" for key, value in receiver.items()]
    lines += ["[logging]", 'format = "json"']
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def receiver_process(
    smartpole_cmd: list[str], child_env: dict[str, str], config: Path, *extra: str
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [*smartpole_cmd, "receiver", "--config", str(config), *extra],
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)


async def wait_for(url: str, proc: subprocess.Popen[bytes], status: int = 200, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(url) as r:
                    if r.status == status:
                        return dict(await r.json())
            assert proc.poll() is None, f"receiver exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"{url} never answered {status}"
            await asyncio.sleep(0.1)


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def established_on(port: int, pids: list[int]) -> dict[int, int]:
    """How many established TCP connections to local ``port`` each of ``pids`` holds (from /proc)."""
    inodes: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":  # 01: ESTABLISHED
            inodes.add(fields[9])
    held = {}
    for pid in pids:
        links = []
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                links.append(os.readlink(fd))
        held[pid] = sum(1 for link in links if link.removeprefix("socket:[").removesuffix("]") in inodes)
    return held


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with pg_schema() as url:
        yield url


async def add_pole(database_url: str, pole_id: str) -> str:
    store = await open_store(database_url, 1)
    try:
        token = new_token()
        await store.add_token(token_hash(token), "pole", pole_id, None)
        return token
    finally:
        await store.close()


async def test_two_workers_share_one_port_and_a_dead_one_is_restarted(
    tmp_path: Path, pg_url: str, smartpole_cmd: list[str], child_env: dict[str, str]
) -> None:
    port = free_port()
    config = write_config(tmp_path / "receiver.toml", port, pg_url)
    token = await add_pole(pg_url, "pole-1")
    base = f"http://127.0.0.1:{port}"
    with receiver_process(smartpole_cmd, child_env, config, "--workers", "2") as proc:
        await wait_for(base + "/health/ready", proc)
        deadline = time.monotonic() + 20
        while len(children(proc.pid)) < 2 or not all(established_on(port, children(proc.pid)).values()):
            # Twenty connections held open: the kernel spreads them over both listening sockets.
            sessions = [aiohttp.ClientSession() for _ in range(20)]
            try:
                for s in sessions:
                    async with s.get(base + "/health/ready") as r:
                        assert r.status == 200
                served = established_on(port, children(proc.pid))
            finally:
                await asyncio.gather(*(s.close() for s in sessions))
            if len(served) == 2 and all(served.values()):
                break
            assert time.monotonic() < deadline, f"connections per worker: {served}"

        status, reply = await post(base, batch("pole-1", [event(1)]), token)
        assert status == 200 and len(reply["accepted"]) == 1, reply

        first, _ = children(proc.pid)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while first in children(proc.pid) or len(children(proc.pid)) < 2:
            assert time.monotonic() < deadline, "the dead worker was not started again"
            await asyncio.sleep(0.1)
        await wait_for(base + "/health/ready", proc)

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        output = proc.stdout.read().decode() if proc.stdout else ""
        assert code == 0, output[-3000:]
    assert "worker_died" in output and "workers_stopped" in output, output[-3000:]


async def test_sigterm_finishes_the_request_in_flight_and_exits_0(
    tmp_path: Path, pg_url: str, smartpole_cmd: list[str], child_env: dict[str, str]
) -> None:
    port = free_port()
    config = write_config(tmp_path / "receiver.toml", port, pg_url, shutdown_timeout_s=10)
    token = await add_pole(pg_url, "pole-1")
    base = f"http://127.0.0.1:{port}"
    blocker = await asyncpg.connect(pg_url)
    try:
        with receiver_process(smartpole_cmd, child_env, config, "--workers", "2") as proc:
            await wait_for(base + "/health/ready", proc)
            # A slow database: the batch's update of its pole's row waits for this transaction.
            locked = blocker.transaction()
            await locked.start()
            await blocker.execute("SELECT 1 FROM poles WHERE pole_id = 'pole-1' FOR UPDATE")
            in_flight = asyncio.create_task(post(base, batch("pole-1", [event(i) for i in range(1, 51)]), token))
            await asyncio.sleep(1.0)
            assert not in_flight.done()
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(1.5)
            with pytest.raises(OSError):  # draining: no new connections...
                await asyncio.open_connection("127.0.0.1", port)
            await locked.commit()
            status, reply = await asyncio.wait_for(in_flight, 10)  # ...but the one in flight finishes
            assert status == 200 and len(reply["accepted"]) == 50, reply
            assert proc.wait(timeout=20) == 0
            assert time.monotonic() - started < 10
        assert await blocker.fetchval("SELECT count(*) FROM events") == 50
    finally:
        await blocker.close()


async def test_not_ready_while_postgresql_is_unreachable(
    tmp_path: Path, smartpole_cmd: list[str], child_env: dict[str, str]
) -> None:
    closed = free_port()
    config = write_config(tmp_path / "receiver.toml", free_port(), f"postgresql://postgres@127.0.0.1:{closed}/test")
    port = int(config.read_text().split("port = ")[1].split()[0])
    with receiver_process(smartpole_cmd, child_env, config) as proc:
        alive = await wait_for(f"http://127.0.0.1:{port}/health", proc)
        assert alive == {"status": "ok"}
        ready = await wait_for(f"http://127.0.0.1:{port}/health/ready", proc, status=503)
        assert ready == {"status": "unavailable", "error": "database unreachable"}
        assert str(closed) not in json.dumps(ready)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


async def test_not_ready_while_the_schema_is_behind(receiver: RunningReceiver, database_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(receiver.url + "/health/ready") as r:
            assert r.status == 200
            assert (await r.json())["database"] == receiver.store.backend
        demote = "DELETE FROM schema_version WHERE version = (SELECT max(version) FROM schema_version)"
        if database_url.startswith("sqlite:///"):
            with contextlib.closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as db:
                db.execute(demote)
                db.commit()
        else:
            conn = await asyncpg.connect(database_url)
            await conn.execute(demote)
            await conn.close()
        async with s.get(receiver.url + "/health/ready") as r:
            assert r.status == 503
            assert "migrations are behind" in (await r.json())["error"]
        async with s.get(receiver.url + "/health") as r:
            assert r.status == 200


async def test_responses_are_counted_by_status_class(
    receiver: RunningReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from receiver.store.base import StoreError

    token = receiver.tokens["pole-1"]
    assert (await post(receiver.url, batch("pole-1", [event(1)]), token))[0] == 200
    assert (await post(receiver.url, batch("pole-1", [event(2)]), "spt_wrong"))[0] == 401

    async def down(*args: object) -> None:
        raise StoreError("connection refused")

    monkeypatch.setattr(receiver.store, "insert_batch", down)
    assert (await post(receiver.url, batch("pole-1", [event(3)]), token))[0] == 503
    async with aiohttp.ClientSession() as s, s.get(receiver.url + "/metrics") as r:
        text = await r.text()
    counts = {
        s.labels["code"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "smartpole_receiver_http_responses_total"
    }
    assert counts == {"2xx": 1, "4xx": 1, "5xx": 1}


async def test_the_mqtt_consumer_finishes_the_message_in_hand_when_drained(tmp_path: Path, pg_url: str) -> None:
    async with rig(pg_url, tmp_path) as r:
        consumer = r.start_consumer()
        await r.connected()
        metrics = r.rx.receiver.ctx.metrics
        assert metrics.mqtt_connected._value.get() == 1  # noqa: SLF001
        assert metrics.mqtt_in_flight_max._value.get() == 16  # noqa: SLF001
        token = r.rx.tokens["pole-1"]
        payload = batch("pole-1", [event(i) for i in range(1, 21)])
        blocker = await asyncpg.connect(pg_url)
        async with aiomqtt.Client(
            "127.0.0.1",
            r.broker.port,
            username="pole-1",
            password=token,
            identifier="pole-1-raw",
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as pole:
            await pole.subscribe(replies_topic("pole-1"), qos=1)
            locked = blocker.transaction()
            await locked.start()
            await blocker.execute("SELECT 1 FROM poles WHERE pole_id = 'pole-1' FOR UPDATE")
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = b"b-1"
            properties.UserProperty = (MAC_PROPERTY, message_mac(token_hash(token), b"b-1", payload))
            await pole.publish(batches_topic("pole-1"), payload, qos=1, properties=properties)
            await eventually(lambda: metrics.mqtt_in_flight._value.get() == 1, 10, "message in hand")  # noqa: SLF001
            draining = asyncio.create_task(consumer.drain())
            await asyncio.sleep(0.5)
            assert not draining.done(), "drained while a message was still in hand"
            await locked.commit()
            await asyncio.wait_for(draining, 10)
            async with asyncio.timeout(10):
                message = await anext(aiter(pole.messages))
            reply = orjson.loads(message.payload)  # type: ignore[arg-type]
            assert reply["status"] == 200 and len(reply["accepted"]) == 20, reply
        await blocker.close()
        assert metrics.mqtt_in_flight._value.get() == 0  # noqa: SLF001


async def test_a_pole_token_is_looked_up_once_within_its_ttl_and_revocation_bites_after_it(
    database_url: str, tmp_path: Path
) -> None:
    running = await start_receiver(database_url, tmp_path / "media", token_cache_s=1.0)
    try:
        token = await running.add_pole("pole-1")
        lookups = []
        real = running.store.lookup_token

        async def counted(digest: str) -> Any:
            lookups.append(digest)
            return await real(digest)

        running.store.lookup_token = counted  # type: ignore[method-assign]
        for seq in (1, 2, 3):
            assert (await post(running.url, batch("pole-1", [event(seq)]), token))[0] == 200
        assert len(lookups) == 1, "later batches within the TTL are not looked up again"
        for _ in range(2):  # an unknown token is asked for every time (and never cached)
            assert (await post(running.url, batch("pole-1", [event(9)]), "spt_unknown"))[0] == 401
        assert len(lookups) == 3

        await running.store.revoke_pole("pole-1")  # as another process (the CLI) would
        revoked_at = time.monotonic()
        while (await post(running.url, batch("pole-1", [event(4)]), token))[0] == 200:
            assert time.monotonic() - revoked_at < 1.0 + 0.5, "still accepted past the TTL"
            await asyncio.sleep(0.1)
    finally:
        await stop_receiver(running)


async def test_without_a_token_cache_every_request_is_looked_up(database_url: str, tmp_path: Path) -> None:
    running = await start_receiver(database_url, tmp_path / "media", token_cache_s=0)
    try:
        token = await running.add_pole("pole-1")
        assert (await post(running.url, batch("pole-1", [event(1)]), token))[0] == 200
        await running.store.revoke_pole("pole-1")
        assert (await post(running.url, batch("pole-1", [event(2)]), token))[0] == 401
    finally:
        await stop_receiver(running)
