"""Dashboard page times for a city: the fleet, a pole and the charts, as an operator's browser asks.

Usage: python bench/dashboard.py [--backend sqlite|postgres] [--poles 1000] [--events-per-pole 24]
       [--requests 50]

``--poles`` poles are registered (each with a name, a place and one of 20 district tags) and each
sends one batch through the store's ingest path: a status block and ``--events-per-pole`` events
over the last day (presence, air quality, speed). A real receiver process (``smartpole receiver``)
then serves a logged-in session, one request at a time over loopback: ``/`` (the first page of the
fleet, 100 poles, and the map), ``/poles/{id}`` (status, 20 recent events, overlay and history) and
``/charts`` for the whole city and for one district, ``--requests`` times each after one warm-up.
PostgreSQL runs in a schema of its own, dropped afterwards. The last line printed is one JSON
object: ``poles``, ``events`` and ``p50_ms``/``p99_ms`` per page.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import uuid_utils
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from httpkit.passwords import hash_password  # noqa: E402
from receiver.auth import new_token, token_hash  # noqa: E402
from receiver.store.factory import open_store  # noqa: E402
from sync.protocol import WireEvent  # noqa: E402

PG_URL = os.environ.get("SMARTPOLE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
PASSWORD = "bench password 1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def events_of(n: int, now: float) -> list[WireEvent]:
    out = []
    for i in range(n):
        ts = now - random.uniform(0, 86_400)
        kind = i % 3
        data: dict[str, Any]
        if kind == 0:
            type_, data = "presence", {"zone": "frame", "total": random.randint(1, 9)}
        elif kind == 1:
            type_, data = "air_quality", {"pm2_5": random.uniform(2, 40), "pm10": random.uniform(5, 60), "samples": 60}
        else:
            type_, data = "speed", {"speed_kmh": random.uniform(20, 70), "over_limit": random.random() < 0.2}
        out.append(
            WireEvent.model_validate(
                {
                    "id": str(uuid_utils.uuid7()),
                    "seq": i + 1,
                    "ts": ts,
                    "type": type_,
                    "priority": "telemetry",
                    "location": None,
                    "data": data,
                    "media": [],
                }
            )
        )
    return out


async def load(url: str, poles: int, per_pole: int) -> None:
    store = await open_store(url, 4)
    now = time.time()
    try:
        await store.put_user("bench", "admin", hash_password(PASSWORD), now)
        for p in range(poles):
            pole_id = f"pole-{p:05d}"
            await store.register_pole(
                pole_id,
                token_hash(new_token()),
                now,
                f"Street {p}",
                52.30 + random.uniform(0, 0.1),
                4.85 + random.uniform(0, 0.1),
                [f"district-{p % 20}"],
            )
            status = {
                "backlog": {"alert": 0, "event": random.randint(0, 50), "telemetry": 3, "media": 0},
                "oldest_age_s": random.uniform(0, 30),
                "software_version": "0.1.0",
                "config_version": "0",
                "uptime_s": 3600.0,
                "cameras": {"street": "up"},
            }
            await store.insert_batch(pole_id, str(uuid.uuid4()), events_of(per_pole, now), status, now)
    finally:
        await store.close()


async def measure(base: str, paths: dict[str, str], requests: int) -> dict[str, Any]:
    jar = aiohttp.CookieJar(unsafe=True)
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(cookie_jar=jar) as s:
        async with s.post(base + "/login", data={"user": "bench", "password": PASSWORD}, allow_redirects=False) as r:
            assert r.status == 303, r.status
        for name, path in paths.items():
            times = []
            for i in range(requests + 1):
                started = time.perf_counter()
                async with s.get(base + path) as r:
                    await r.read()
                    assert r.status == 200, (path, r.status)
                if i:  # the first one warms up
                    times.append((time.perf_counter() - started) * 1000)
            times.sort()
            out[name] = {
                "p50_ms": round(statistics.median(times), 1),
                "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 1),
            }
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    schema = None
    if args.backend == "postgres":
        schema = f"bench_dash_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(PG_URL)
        await admin.execute(f"CREATE SCHEMA {schema}")
        await admin.close()
        url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}search_path={schema}"
    else:
        url = f"sqlite:///{workdir / 'receiver.db'}"
    started = time.perf_counter()
    await load(url, args.poles, args.events_per_pole)
    print(f"loaded {args.poles} poles in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    port = free_port()
    config = workdir / "receiver.toml"
    config.write_text(
        f'[receiver]\nport = {port}\ndatabase_url = "{url}"\nmedia_dir = "{workdir / "media"}"\n'
        '[logging]\nlevel = "warning"\n'
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "smartpole.cli", "receiver", "--config", str(config)], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                try:
                    async with s.get(base + "/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        pages = {
            "fleet": "/",
            "pole": "/poles/pole-00007",
            "charts_city": "/charts",
            "charts_district": "/charts?tag=district-3",
        }
        figures = await measure(base, pages, args.requests)
    finally:
        proc.terminate()
        proc.wait(10)
        if schema is not None:
            admin = await asyncpg.connect(PG_URL)
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
            await admin.close()
    return {
        "backend": args.backend,
        "poles": args.poles,
        "events": args.poles * args.events_per_pole,
        **{f"{page}_{k}": v for page, f in figures.items() for k, v in f.items()},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--poles", type=int, default=1000)
    parser.add_argument("--events-per-pole", type=int, default=24)
    parser.add_argument("--requests", type=int, default=50)
    print(json.dumps(uvloop.run(main(parser.parse_args()))))
