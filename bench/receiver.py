"""A city's load on the receiver: 1,000 poles against N receiver processes sharing one PostgreSQL.

Usage: python bench/receiver.py [--receivers 2] [--transport http|mqtt] [--poles 1000]
                                [--steady-seconds 60] [--profile FILE]

Each simulated pole (an asyncio task) has its own token and its own event ids; 5% of its batches
are sent twice, as a pole does when a reply is lost. Two phases:

- burst: every pole posts 10 gzip batches of 50 events at once, through as many lanes as its
  uplink has (``--in-flight``: 1 over HTTP, 4 over MQTT; 10 sends them all concurrently);
- steady: 20,000 events/s offered in batches of 20 (1,000 batches/s: each pole one batch a second,
  spread evenly), whether or not earlier ones were answered, for ``--steady-seconds``.

The receivers are ``smartpole receiver --workers N`` (N processes on one port) on a database of
their own, dropped afterwards; with ``--transport mqtt`` the poles publish through a Mosquitto of
the bench's own on 127.0.0.1 (signed as real poles sign) and the receivers' ``[mqtt]`` consumers
answer.
A batch that gets an error (5xx, connection trouble, timeout) is counted and sent again, as a pole
would. Afterwards the events table is counted: ``lost`` and ``duplicates_stored`` are measured.
Where the time goes: CPU seconds of the receiver processes, of the PostgreSQL backends serving the
bench's database and of this load generator, per phase (from /proc). ``--profile FILE`` runs one receiver process (no
supervisor) under cProfile and writes its stats there. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import asyncpg
import orjson
import uuid_utils
import uvloop
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from receiver.auth import new_token  # noqa: E402
from receiver.store.base import token_id_of  # noqa: E402
from sync.protocol import (  # noqa: E402
    MAC_PROPERTY,
    batches_topic,
    compress,
    encode_batch,
    message_mac,
    replies_topic,
    token_hash,
)

PG_URL = os.environ.get("SMARTPOLE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
# The broker: a Mosquitto of the bench's own on 127.0.0.1 (anonymous, no persistence), because the
# system's default queue (1,000 messages per client) drops a burst of 10,000 batches; its queue is
# sized as config/mosquitto/mosquitto.conf sizes it. The receivers still check each pole's signature.
BROKER_CONF = """
listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 200000
max_inflight_messages 100
"""
TICK = os.sysconf("SC_CLK_TCK")
REQUEST_TIMEOUT_S = 60.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return found


@dataclass
class Cpu:
    """CPU seconds of the receivers, of the PostgreSQL backends serving the bench's database (other
    work on the same server is not counted) and of this process."""

    receivers: float
    postgres: float
    load_generator: float

    @classmethod
    async def now(cls, receiver_root: int, admin: asyncpg.Connection, database: str) -> Cpu:
        backends = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            sum(cpu_seconds(p) for p in descendants(receiver_root)),
            sum(cpu_seconds(r[0]) for r in backends),
            usage.ru_utime + usage.ru_stime,
        )

    def since(self, before: Cpu) -> dict[str, float]:
        return {
            "receivers_cpu_s": round(self.receivers - before.receivers, 1),
            "postgres_cpu_s": round(self.postgres - before.postgres, 1),
            "load_generator_cpu_s": round(self.load_generator - before.load_generator, 1),
        }


@dataclass
class Pole:
    pole_id: str
    token: str
    lanes: asyncio.Semaphore  # batches in flight at once, as its uplink's max_in_flight
    seq: int = 0
    sent_ids: list[str] = field(default_factory=list)

    def batch(self, n: int) -> bytes:
        """A gzip batch of ``n`` new events, its ids remembered."""
        now = time.time()
        bodies = []
        for _ in range(n):
            self.seq += 1
            event_id = str(uuid_utils.uuid7())
            self.sent_ids.append(event_id)
            bodies.append(
                f'{{"id":"{event_id}","seq":{self.seq},"ts":{now},"type":"presence","priority":"event",'
                f'"location":{{"lat":52.1,"lon":4.3,"source":"config"}},"data":{{"people":{self.seq % 7}}},'
                f'"media":[]}}'
            )
        status = {"backlog": {"event": 0}, "oldest_age_s": 0.0, "software_version": "bench"}
        return compress(encode_batch(self.pole_id, str(uuid_utils.uuid7()), now, bodies, status), 1)


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    accepted: int = 0
    duplicates: int = 0
    last_reply: float = 0.0


Send = Callable[[Pole, bytes], Awaitable[dict[str, Any] | None]]  # the reply, or None for a failure to retry


async def deliver(send: Send, pole: Pole, body: bytes, tally: Tally, twice: bool) -> None:
    """Send until answered (a pole retries), timing from when it was due (waiting for one of the
    pole's lanes included); ``twice``: then once more."""
    started = time.perf_counter()
    async with pole.lanes:
        await _deliver(send, pole, body, tally, twice, started)


async def _deliver(send: Send, pole: Pole, body: bytes, tally: Tally, twice: bool, started: float) -> None:
    for attempt in range(2 if twice else 1):
        while True:
            reply = await send(pole, body)
            if reply is not None:
                break
            tally.errors += 1
            await asyncio.sleep(0.2)
        if attempt == 0:
            tally.latencies_ms.append((time.perf_counter() - started) * 1000)
        tally.accepted += len(reply.get("accepted", []))
        tally.duplicates += len(reply.get("duplicates", []))
    tally.last_reply = time.perf_counter()


class HttpPoles:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/v1/batches"
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        )

    async def send(self, pole: Pole, body: bytes) -> dict[str, Any] | None:
        headers = {
            "Authorization": f"Bearer {pole.token}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        try:
            async with self.session.post(self.url, data=body, headers=headers) as r:
                if r.status != 200:
                    return None
                return dict(orjson.loads(await r.read()))
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def close(self) -> None:
        await self.session.close()


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    (workdir / "mosquitto.conf").write_text(BROKER_CONF.format(port=port))
    proc = subprocess.Popen(["mosquitto", "-c", str(workdir / "mosquitto.conf")], stderr=subprocess.DEVNULL)
    import socket

    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return proc, port
        time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


class MqttPoles:
    """One MQTT connection per pole, as poles have; replies matched by correlation data."""

    def __init__(self, poles: list[Pole], port: int) -> None:
        self.poles = poles
        self.port = port
        self.clients: dict[str, aiomqtt.Client] = {}
        self.waiting: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        async def connect(pole: Pole) -> None:
            client = aiomqtt.Client(
                "127.0.0.1", self.port, identifier=pole.pole_id, protocol=aiomqtt.ProtocolVersion.V5
            )
            await client.__aenter__()
            await client.subscribe(replies_topic(pole.pole_id), qos=1)
            self.clients[pole.pole_id] = client
            self.tasks.append(asyncio.create_task(self._replies(client)))

        for i in range(0, len(self.poles), 50):
            await asyncio.gather(*(connect(p) for p in self.poles[i : i + 50]))

    async def _replies(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            correlation = bytes(getattr(message.properties, "CorrelationData", b"") or b"")
            future = self.waiting.pop(correlation, None)
            if future is not None and not future.done():
                future.set_result(orjson.loads(message.payload))  # type: ignore[arg-type]

    async def send(self, pole: Pole, body: bytes) -> dict[str, Any] | None:
        correlation = uuid.uuid4().bytes
        properties = Properties(PacketTypes.PUBLISH)
        properties.CorrelationData = correlation
        properties.ResponseTopic = replies_topic(pole.pole_id)
        properties.UserProperty = (MAC_PROPERTY, message_mac(token_hash(pole.token), correlation, body))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[correlation] = future
        try:
            await self.clients[pole.pole_id].publish(batches_topic(pole.pole_id), body, qos=1, properties=properties)
            reply = await asyncio.wait_for(future, REQUEST_TIMEOUT_S)
        except (aiomqtt.MqttError, TimeoutError):
            self.waiting.pop(correlation, None)
            return None
        return reply if reply.get("status") == 200 else None

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for client in self.clients.values():
            await client.__aexit__(None, None, None)


def p99(values: list[float]) -> float:
    return round(statistics.quantiles(values, n=100)[98], 1) if len(values) > 1 else 0.0


async def burst(poles: list[Pole], send: Send, batches: int, events: int, rng: random.Random) -> dict[str, Any]:
    bodies = [[pole.batch(events) for _ in range(batches)] for pole in poles]  # built before the clock starts
    tally = Tally()
    started = time.perf_counter()
    await asyncio.gather(
        *(
            deliver(send, pole, body, tally, rng.random() < 0.05)
            for pole, mine in zip(poles, bodies, strict=True)
            for body in mine
        )
    )
    elapsed = tally.last_reply - started
    n = len(poles) * batches * events
    return {"events": n, "seconds": round(elapsed, 2), "events_per_s": round(n / elapsed), "tally": tally}


async def steady(poles: list[Pole], send: Send, rate: int, batch: int, seconds: float, rng: random.Random) -> Any:
    per_second = rate / batch  # batches a second, all poles together
    period = len(poles) / per_second  # each pole's interval between batches
    rounds = max(1, round(seconds / period))
    plan = [(r * period + i * period / len(poles), pole) for r in range(rounds) for i, pole in enumerate(poles)]
    bodies = [pole.batch(batch) for _, pole in plan]
    tally = Tally()
    tasks = []
    started = time.perf_counter()
    for (at, pole), body in zip(plan, bodies, strict=True):
        delay = started + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(deliver(send, pole, body, tally, rng.random() < 0.05)))
    await asyncio.gather(*tasks)
    offered_s = rounds * period
    n = len(plan) * batch
    elapsed = max(tally.last_reply - started, offered_s)
    return {
        "events": n,
        "offered_per_s": round(n / offered_s),
        "events_per_s": round(n / elapsed),
        "seconds": round(elapsed, 2),
        "tally": tally,
    }


async def register(database_url: str, count: int, in_flight: int) -> list[Pole]:
    """Poles and their tokens, written straight into the receiver's tables (the schema made by a
    receiver first); a real city registers them through the fleet API."""
    poles = [Pole(f"bench-{i:05d}", new_token(), asyncio.Semaphore(in_flight)) for i in range(count)]
    conn = await asyncpg.connect(database_url)
    try:
        now = time.time()
        await conn.executemany(
            "INSERT INTO poles (pole_id, created_at) VALUES ($1, $2)", [(p.pole_id, now) for p in poles]
        )
        await conn.executemany(
            "INSERT INTO tokens (token_hash, token_id, role, pole_id, created_at) VALUES ($1, $2, 'pole', $3, $4)",
            [(token_hash(p.token), token_id_of(token_hash(p.token)), p.pole_id, now) for p in poles],
        )
    finally:
        await conn.close()
    return poles


async def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(f"http://127.0.0.1:{port}/health/ready") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"receiver not ready (exit {proc.poll()})")
            await asyncio.sleep(0.1)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = random.Random(13)
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f"CREATE DATABASE {name}")
    database_url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    port = free_port()
    conf = [
        "[receiver]",
        f"port = {port}",
        f"media_dir = {json.dumps(str(workdir / 'media'))}",
        f"pool_size = {args.pool_size}",
        "[logging]",
        'level = "warning"',
        'format = "json"',
    ]
    broker: subprocess.Popen[bytes] | None = None
    if args.transport == "mqtt":
        broker, broker_port = start_broker(workdir)
        run_id = uuid.uuid4().hex[:8]
        conf += [
            "[mqtt]",
            "enabled = true",
            f'url = "mqtt://127.0.0.1:{broker_port}"',
            f'group = "bench-{run_id}"',
            f'client_id = "bench-{run_id}"',
            "session_expiry_s = 0",
            "max_in_flight = 200",
        ]
    (workdir / "receiver.toml").write_text("\n".join(conf) + "\n")
    env = dict(os.environ, SMARTPOLE_RECEIVER_DATABASE_URL=database_url, PYTHONPATH=str(ROOT))
    cli = ["-m", "smartpole.cli", "receiver", "--config", str(workdir / "receiver.toml")]
    if args.profile:
        command = [sys.executable, "-m", "cProfile", "-o", args.profile, *cli]
    else:
        command = [sys.executable, *cli, "--workers", str(args.receivers)]
    proc = subprocess.Popen(command, env=env, cwd=workdir)
    transport: HttpPoles | MqttPoles | None = None
    try:
        await wait_ready(port, proc)
        in_flight = args.in_flight or (1 if args.transport == "http" else 4)  # the uplink's defaults
        poles = await register(database_url, args.poles, in_flight)
        if args.transport == "http":
            transport = HttpPoles(port)
        else:
            transport = MqttPoles(poles, broker_port)
            await transport.start()
        send = transport.send

        before = await Cpu.now(proc.pid, admin, name)
        b = await burst(poles, send, args.burst_batches, args.burst_events, rng)
        after_burst = await Cpu.now(proc.pid, admin, name)
        s = await steady(poles, send, args.steady_rate, args.steady_batch, args.steady_seconds, rng)
        after_steady = await Cpu.now(proc.pid, admin, name)
    finally:
        if transport is not None:
            await transport.close()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        if broker is not None:
            broker.terminate()
            broker.wait(10)
    conn = await asyncpg.connect(database_url)
    try:
        stored, distinct = await conn.fetchrow("SELECT count(*), count(DISTINCT (pole_id, event_id)) FROM events")
        sent = {(p.pole_id, i) for p in poles for i in p.sent_ids}
        found = {(r[0], str(r[1])) for r in await conn.fetch("SELECT pole_id, event_id FROM events")}
    finally:
        await conn.close()
    await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    await admin.close()
    bt, st = b.pop("tally"), s.pop("tally")
    return {
        "bench": "receiver",
        "poles": args.poles,
        "receivers": args.receivers,
        "transport": args.transport,
        "profiled": bool(args.profile),
        "pole_in_flight": in_flight,
        "events": b["events"],
        "events_per_s": b["events_per_s"],
        "burst_seconds": b["seconds"],
        "p99_batch_ms": p99(bt.latencies_ms),
        "p50_batch_ms": round(statistics.median(bt.latencies_ms), 1),
        "steady_offered_per_s": s["offered_per_s"],
        "steady_events_per_s": s["events_per_s"],
        "steady_seconds": s["seconds"],
        "steady_p99_batch_ms": p99(st.latencies_ms),
        "steady_p50_batch_ms": round(statistics.median(st.latencies_ms), 1),
        "errors": bt.errors + st.errors,
        "duplicates_answered": bt.duplicates + st.duplicates,
        "duplicates_stored": stored - distinct,
        "lost": len(sent - found),
        "receiver_exit": code,
        "burst_cpu": after_burst.since(before),
        "steady_cpu": after_steady.since(after_burst),
        "cores": os.cpu_count(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--receivers", type=int, default=2, help="receiver processes (--workers)")
    ap.add_argument("--transport", choices=["http", "mqtt"], default="http")
    ap.add_argument("--poles", type=int, default=1000)
    ap.add_argument("--burst-batches", type=int, default=10)
    ap.add_argument("--burst-events", type=int, default=50)
    ap.add_argument("--steady-rate", type=int, default=20_000, help="events per second offered")
    ap.add_argument("--steady-batch", type=int, default=20)
    ap.add_argument("--steady-seconds", type=float, default=60.0)
    ap.add_argument(
        "--in-flight",
        type=int,
        default=None,
        help="batches a pole has in flight at once (default: the uplink's, 1 over HTTP, 4 over MQTT); "
        "10 sends a pole's whole burst at once",
    )
    ap.add_argument("--pool-size", type=int, default=8, help="database connections per receiver process")
    ap.add_argument("--profile", metavar="FILE", help="one receiver process under cProfile, stats written to FILE")
    args = ap.parse_args()
    if args.profile:
        args.receivers = 1
    with tempfile.TemporaryDirectory(prefix="bench-receiver-") as tmp:
        result = uvloop.run(run(args, Path(tmp)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
