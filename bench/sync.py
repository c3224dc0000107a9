"""Drain a 200,000-event backlog from a pole's outbox into a receiver on loopback.

Usage: python bench/sync.py [--backend sqlite|postgres] [--uplink http|mqtt] [--events 200000] [--batch 2000]

The receiver runs as its own process (``smartpole receiver``); this process is the
gateway: it fills a fresh outbox, then runs the real uplink until the backlog is
empty: HTTP straight to the receiver, or MQTT through a Mosquitto process of the
bench's own (password file and ACL as in config/mosquitto/), which the receiver
consumes with its shared subscription. Afterwards every stored event is counted by the marker it was
given, so ``lost`` and ``duplicates`` are measured, not assumed. The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import uvloop
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from receiver import service  # noqa: E402
from receiver.config import ReceiverConfig, ReceiverSection  # noqa: E402
from receiver.store.base import EventQuery  # noqa: E402
from receiver.store.factory import open_store  # noqa: E402
from sync.events import NewEvent, Priority  # noqa: E402
from sync.outbox import Outbox, OutboxConfig  # noqa: E402
from sync.uplink.base import UplinkConfig  # noqa: E402
from sync.uplink.factory import build_uplink  # noqa: E402
from tests.helpers.broker import Broker  # noqa: E402

BROKER_PASSWORD = "bench-receiver-password-0123456789"
PG_URL = os.environ.get("SMARTPOLE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def peak_rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fill(outbox: Outbox, n: int) -> None:
    priorities = [Priority.EVENT, Priority.TELEMETRY, Priority.EVENT, Priority.ALERT, Priority.MEDIA]
    for start in range(0, n, 5000):
        await outbox.put_many(
            [
                NewEvent(
                    "presence",
                    {"marker": i, "zone": "crossing-north", "people": i % 7, "vehicles": {"car": i % 3, "bus": 0}},
                    priorities[i % 5],
                )
                for i in range(start, min(n, start + 5000))
            ]
        )


async def count_markers(database_url: str) -> tuple[int, int]:
    store = await open_store(database_url, 2)
    try:
        rows = 0
        markers: set[int] = set()
        after = 0
        while True:
            page = await store.query_events(EventQuery(after=after, limit=20_000))
            rows += len(page.events)
            markers.update(e["data"]["marker"] for e in page.events)
            if page.next_cursor is None:
                return rows, len(markers)
            after = page.next_cursor
    finally:
        await store.close()


async def run(backend: str, uplink_kind: str, events: int, batch: int, workdir: Path) -> dict[str, Any]:
    schema = None
    if backend == "postgres":
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(PG_URL)
        await admin.execute(f"CREATE SCHEMA {schema}")
        database_url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}search_path={schema}"
    else:
        database_url = f"sqlite:///{workdir / 'receiver.db'}"
    port = free_port()
    config = ReceiverConfig(
        receiver=ReceiverSection(port=port, database_url=SecretStr(database_url), media_dir=workdir / "media")
    )
    token = await service.add_pole(config, "bench-pole")
    conf_file = workdir / "receiver.toml"
    conf = f'[receiver]\nport = {port}\nmedia_dir = "{workdir / "media"}"\n\n'
    conf += '[logging]\nlevel = "warning"\nformat = "json"\n'
    env = dict(os.environ, SMARTPOLE_RECEIVER_DATABASE_URL=database_url, PYTHONPATH=str(ROOT))
    broker = None
    if uplink_kind == "mqtt":
        broker = Broker(workdir / "broker", {"bench-pole": token, "receiver": BROKER_PASSWORD}).start()
        conf += f'\n[mqtt]\nenabled = true\nurl = "{broker.url}"\nclient_id = "bench-receiver"\n'
        env["SMARTPOLE_MQTT_PASSWORD"] = BROKER_PASSWORD
    conf_file.write_text(conf)
    receiver = subprocess.Popen(
        [sys.executable, "-m", "smartpole.cli", "receiver", "--config", str(conf_file)], env=env, cwd=workdir
    )
    try:
        outbox = await Outbox.open(workdir / "outbox.db", OutboxConfig(max_bytes=10**10))
        t0 = time.perf_counter()
        await fill(outbox, events)
        fill_s = time.perf_counter() - t0

        async def status() -> dict[str, Any]:
            return {"backlog": (await outbox.stats()).depth}

        uplink = build_uplink(
            outbox,
            UplinkConfig(
                kind=uplink_kind,
                url=broker.url if broker is not None else f"http://127.0.0.1:{port}",
                token=SecretStr(token),
                max_batch_events=batch,
                max_batch_bytes=batch * 400,
                bandwidth_bytes_per_s=0,
                linger_s=0,
                gzip_level=1,
            ),
            "bench-pole",
            status,
        )
        import aiohttp

        async with aiohttp.ClientSession() as s:  # wait for the receiver to listen
            for _ in range(200):
                try:
                    async with s.get(f"http://127.0.0.1:{port}/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        task = asyncio.create_task(uplink.run())
        while outbox.backlog:
            await asyncio.sleep(0.01)
        drain_s = time.perf_counter() - t0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await outbox.close()
        gateway_rss = peak_rss_mb()
        receiver_rss = peak_rss_mb(receiver.pid)
    finally:
        receiver.terminate()
        receiver.wait(30)
        if broker is not None:
            broker.stop()
    rows, distinct = await count_markers(database_url)
    if schema is not None:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()
    return {
        "bench": "sync",
        "backend": backend,
        "uplink": uplink_kind,
        "events": events,
        "batch_events": batch,
        "fill_s": round(fill_s, 2),
        "drain_s": round(drain_s, 2),
        "drain_events_per_s": round(events / drain_s),
        "batches": sum(uplink.state.batches.values()),
        "wire_mb": round(uplink.state.bytes_sent / 1e6, 1),
        "gateway_rss_mb": gateway_rss,
        "receiver_rss_mb": receiver_rss,
        "duplicates": rows - distinct,
        "lost": events - distinct,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--uplink", choices=["http", "mqtt"], default="http")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=2000, help="events per batch")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        result = uvloop.run(run(args.backend, args.uplink, args.events, args.batch, Path(tmp)))
    print(__import__("json").dumps(result))


if __name__ == "__main__":
    main()
