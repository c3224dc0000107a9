"""A real pole daemon process and a real receiver on loopback: exactly once, in priority order,
through outages, SIGKILLs, dropped replies and timeouts. Runs against both receiver backends."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import RunningReceiver, start_receiver, stop_receiver
from tests.helpers.pole import PoleProcess, free_port

PRIORITIES = ["media", "telemetry", "event", "alert"]


async def post_event(
    session: aiohttp.ClientSession, pole: PoleProcess, marker: int, priority: str = "event"
) -> str | None:
    """The id the pole committed, or None if the pole could not answer (it may or may not have it)."""
    try:
        async with session.post(
            pole.url + "/v1/events",
            json={"type": "reading", "priority": priority, "data": {"marker": marker}},
            headers=pole.headers,
        ) as r:
            assert r.status == 201, await r.text()
            return (await r.json())["ids"][0]
    except (TimeoutError, aiohttp.ClientError):
        return None


async def wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_events_arrive_once_in_priority_order(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    token_rx = await start_receiver(database_url, tmp_path / "media", port=port)
    token = await token_rx.add_pole("pole-1")
    await stop_receiver(token_rx)  # the link is down while the pole collects events

    pole = PoleProcess(tmp_path, f"http://127.0.0.1:{port}", token)
    await asyncio.to_thread(pole.start)
    accepted: dict[str, str] = {}
    async with aiohttp.ClientSession() as s:
        for i in range(40):
            priority = PRIORITIES[i % 4]
            event_id = await post_event(s, pole, i, priority)
            assert event_id is not None
            accepted[event_id] = priority
    # Every attempt that read the queue before the last event was committed has failed by now.
    await asyncio.sleep(1.0)

    rx = await start_receiver(database_url, tmp_path / "media", port=port)
    try:

        async def all_there() -> bool:
            return len(await rx.all_events()) >= 40

        await wait_for(all_there)
        got = await rx.all_events()
        assert sorted(e["id"] for e in got) == sorted(accepted)
        rank = {p: n for n, p in enumerate(reversed(PRIORITIES))}
        arrival = [(rank[e["priority"]], e["seq"]) for e in got]
        assert arrival == sorted(arrival), "alerts first, then events, telemetry, media; seq within each"
        assert all(e["location"] is None for e in got), "no location configured, none invented"
    finally:
        assert await asyncio.to_thread(pole.stop) == 0
        await stop_receiver(rx)


async def test_outage_backlog_drains_nothing_lost_nothing_doubled(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    rx = await start_receiver(database_url, tmp_path / "media", port=port)
    token = await rx.add_pole("pole-1")
    pole = PoleProcess(tmp_path, f"http://127.0.0.1:{port}", token)
    await asyncio.to_thread(pole.start)
    accepted: list[str] = []
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(20):
                accepted.append(await post_event(s, pole, i))  # type: ignore[arg-type]

            async def first_half() -> bool:
                return len(await rx.all_events()) == 20

            await wait_for(first_half)
            await stop_receiver(rx)
            for i in range(20, 60):  # the receiver is down; the pole keeps accepting
                event_id = await post_event(s, pole, i)
                assert event_id is not None
                accepted.append(event_id)
            await asyncio.sleep(1.0)
        rx = await start_receiver(database_url, tmp_path / "media", port=port)

        async def drained() -> bool:
            return len(await rx.all_events()) >= 60

        await wait_for(drained)
        await asyncio.sleep(0.5)
        got = await rx.all_events()
        assert sorted(e["id"] for e in got) == sorted(accepted)
        assert sorted(e["data"]["marker"] for e in got) == list(range(60))
    finally:
        assert await asyncio.to_thread(pole.stop) == 0
        await stop_receiver(rx)


class ChaosMiddleware:
    """Commits, then drops the connection or answers too late; or fails before committing."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.enabled = True
        self.counts = {"drop": 0, "late": 0, "500": 0, "ok": 0}

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/v1/batches" or not self.enabled:
            return await handler(request)
        roll = self.rng.random()
        if roll < 0.1:
            self.counts["500"] += 1
            return web.json_response({"error": "injected"}, status=500)
        response = await handler(request)
        if roll < 0.25:
            self.counts["drop"] += 1
            assert request.transport is not None
            request.transport.abort()
        elif roll < 0.35:
            self.counts["late"] += 1
            await asyncio.sleep(1.5)  # the pole's timeout is 1 s
        else:
            self.counts["ok"] += 1
        return response


async def test_sigkill_dropped_replies_and_timeouts(database_url: str, tmp_path: Path) -> None:
    """SIGKILL lands while ingest requests are in flight on several connections (not between them),
    while the receiver drops replies, answers late or fails: every 201 arrives exactly once."""
    chaos = ChaosMiddleware(seed=7)
    port = free_port()
    rx: RunningReceiver = await start_receiver(
        database_url, tmp_path / "media", port=port, middlewares=[chaos.middleware]
    )
    token = await rx.add_pole("pole-1")
    # This client posts one event at a time and waits for each: it gets one per commit window, so a
    # short window lets it post enough events for the kills and the chaos to land among them.
    pole = PoleProcess(
        tmp_path,
        f"http://127.0.0.1:{port}",
        token,
        uplink={"max_batch_events": 7},
        outbox={"commit_interval_ms": 20},
    )
    await asyncio.to_thread(pole.start)
    acknowledged: set[str] = set()
    unanswered = 0  # requests the kill cut off: the pole may or may not have committed them
    next_marker = 0
    rng = random.Random(11)

    async def post(s: aiohttp.ClientSession) -> None:
        nonlocal next_marker, unanswered
        marker, next_marker = next_marker, next_marker + 1
        event_id = await post_event(s, pole, marker, rng.choice(PRIORITIES))
        if event_id is None:
            unanswered += 1
        else:
            acknowledged.add(event_id)

    async def poster(s: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await post(s)
            await asyncio.sleep(0.02)

    sessions = [aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) for _ in range(6)]  # 6 connections
    try:
        for _ in range(8):
            stop = asyncio.Event()
            posters = [asyncio.create_task(poster(s, stop)) for s in sessions]
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            # A request on every connection at once, and the kill while they are under way.
            burst = [asyncio.create_task(post(s)) for s in sessions]
            await asyncio.sleep(rng.uniform(0.0, 0.004))
            await asyncio.to_thread(pole.kill)
            stop.set()
            await asyncio.gather(*posters, *burst)
            await asyncio.to_thread(pole.start)
        chaos.enabled = False

        async def all_acknowledged_arrived() -> bool:
            return acknowledged <= {e["id"] for e in await rx.all_events()}

        await wait_for(all_acknowledged_arrived, timeout=90)
        await asyncio.sleep(1.0)  # anything still in flight would show up now

        got = await rx.all_events()
        print(
            f"{len(acknowledged)} acknowledged, {unanswered} cut off by kills, {len(got)} stored; chaos {chaos.counts}"
        )
        markers = [e["data"]["marker"] for e in got]
        assert len(markers) == len(set(markers)), "an event reached the receiver twice"
        assert set(markers) <= set(range(next_marker)), "an event appeared that nobody submitted"
        assert acknowledged <= {e["id"] for e in got}
        assert len(acknowledged) > 100 and pole.starts == 9
        assert unanswered >= 8, "the kills cut requests off mid-flight"
        assert chaos.counts["drop"] > 0 and chaos.counts["late"] > 0 and chaos.counts["500"] > 0
    finally:
        for session in sessions:
            await session.close()
        assert await asyncio.to_thread(pole.stop) == 0
        await stop_receiver(rx)
