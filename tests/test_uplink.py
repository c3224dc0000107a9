"""The HTTP uplink against a real receiver on 127.0.0.1, with faults injected by middleware."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from receiver.policy import PolicyConfig
from sync.events import NewEvent, Priority
from sync.outbox import Outbox
from sync.uplink.base import UplinkConfig
from sync.uplink.factory import build_uplink
from sync.uplink.sender import BatchUplink
from tests.conftest import RunningReceiver, start_receiver, stop_receiver
from tests.test_media_checks import real_jpeg


class Faults:
    """A middleware that answers, delays or drops batch requests as a test scripts it."""

    def __init__(self) -> None:
        self.script: list[str] = []
        self.batch_requests = 0
        self.media_requests = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if request.path.startswith("/v1/media"):
            self.media_requests += 1
        if request.path != "/v1/batches":
            return await handler(request)
        self.batch_requests += 1
        action = self.script.pop(0) if self.script else "pass"
        if action == "500":
            return web.json_response({"error": "injected failure"}, status=500)
        response = await handler(request)
        if action == "drop":  # committed, then the connection dies before the reply
            assert request.transport is not None
            request.transport.abort()
        elif action.startswith("delay:"):
            await asyncio.sleep(float(action.split(":")[1]))
        return response


@pytest.fixture
async def faults() -> Faults:
    return Faults()


@pytest.fixture
async def rx(tmp_path: Path, faults: Faults) -> AsyncIterator[RunningReceiver]:
    running = await start_receiver(
        f"sqlite:///{tmp_path / 'rx.db'}", tmp_path / "media", middlewares=[faults.middleware]
    )
    await running.add_pole("pole-1")
    yield running
    await stop_receiver(running)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "outbox.db")
    yield box
    await box.close()


def uplink_for(outbox: Outbox, rx: RunningReceiver, **overrides: Any) -> BatchUplink:
    settings: dict[str, Any] = {
        "url": rx.url,
        "token": SecretStr(rx.tokens["pole-1"]),
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.4,
        "bandwidth_bytes_per_s": 0,
        "linger_s": 0,
        "timeout_s": 2,
    }
    settings.update(overrides)

    async def status() -> dict[str, Any]:
        return {"backlog": (await outbox.stats()).depth}

    uplink = build_uplink(outbox, UplinkConfig(**settings), "pole-1", status)
    assert isinstance(uplink, BatchUplink)
    return uplink


async def run_until(uplink: BatchUplink, done: Callable[[], Any], timeout: float = 20) -> None:
    task = asyncio.create_task(uplink.run())
    try:
        deadline = time.monotonic() + timeout
        while not await done():
            assert time.monotonic() < deadline, f"timed out; uplink state {uplink.state}"
            assert not task.done(), task
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def drained(outbox: Outbox) -> Callable[[], Any]:
    async def check() -> bool:
        return outbox.backlog == 0

    return check


async def test_drains_in_priority_order_exactly_once(outbox: Outbox, rx: RunningReceiver) -> None:
    order = [Priority.MEDIA, Priority.TELEMETRY, Priority.EVENT, Priority.ALERT] * 5
    receipts = [await outbox.put(NewEvent("reading", {"i": i}, p)) for i, p in enumerate(order)]
    await run_until(uplink_for(outbox, rx, max_batch_events=3), drained(outbox))
    got = await rx.all_events()
    assert sorted(e["id"] for e in got) == sorted(r.id for r in receipts)
    rank = {"alert": 0, "event": 1, "telemetry": 2, "media": 3}
    arrival = [(rank[e["priority"]], e["seq"]) for e in got]
    assert arrival == sorted(arrival), "stored in priority order, then seq"


async def test_backs_off_on_5xx_then_drains(outbox: Outbox, rx: RunningReceiver, faults: Faults) -> None:
    faults.script = ["500"] * 4
    await outbox.put_many([NewEvent("reading", {"i": i}) for i in range(10)])
    uplink = uplink_for(outbox, rx)
    seen_backoff: list[float] = []

    async def done() -> bool:
        if uplink.state.state == "backoff":
            seen_backoff.append(uplink.state.backoff_s)
        return outbox.backlog == 0

    await run_until(uplink, done)
    assert faults.batch_requests == 5
    assert seen_backoff and max(seen_backoff) <= 0.4
    assert uplink.state.batches["server_error"] == 4 and uplink.state.backoff_s == 0
    assert len(await rx.all_events()) == 10


async def test_dropped_reply_and_timeout_make_duplicates_not_losses(
    outbox: Outbox, rx: RunningReceiver, faults: Faults
) -> None:
    faults.script = ["drop", "delay:1.5", "drop"]
    receipts = await outbox.put_many([NewEvent("reading", {"i": i}) for i in range(30)])
    uplink = uplink_for(outbox, rx, timeout_s=0.5, max_batch_events=10)
    await run_until(uplink, drained(outbox))
    got = await rx.all_events()
    assert sorted(e["id"] for e in got) == sorted(r.id for r in receipts), "each event stored exactly once"
    assert uplink.state.batches["network_error"] == 3


async def test_refused_token_stops_and_retries_slowly(outbox: Outbox, rx: RunningReceiver, faults: Faults) -> None:
    await outbox.put(NewEvent("reading", {}))
    uplink = uplink_for(outbox, rx, token=SecretStr("spt_wrong"), auth_retry_s=30)
    task = asyncio.create_task(uplink.run())
    await asyncio.sleep(1.0)
    assert uplink.state.state == "auth_failed"
    assert "401" in (uplink.state.last_error or "")
    assert faults.batch_requests == 1, "never hammer a receiver that refuses us"
    uplink.sync_now()
    await asyncio.sleep(0.3)
    assert faults.batch_requests == 2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert outbox.backlog == 1


async def test_invalid_event_is_dead_lettered_and_the_rest_delivered(outbox: Outbox, rx: RunningReceiver) -> None:
    good = [await outbox.put(NewEvent("reading", {"i": i})) for i in range(3)]
    bad = await outbox.put(NewEvent("Not A Type", {}))
    await run_until(uplink_for(outbox, rx), drained(outbox))
    assert sorted(e["id"] for e in await rx.all_events()) == sorted(r.id for r in good)
    (dead,) = await outbox.dead_letters()
    assert dead.id == bad.id and dead.reason.startswith("type: ")


async def test_event_too_large_for_receiver_is_isolated(tmp_path: Path, outbox: Outbox, faults: Faults) -> None:
    rx = await start_receiver(
        f"sqlite:///{tmp_path / 'small.db'}",
        tmp_path / "m",
        middlewares=[faults.middleware],
        max_decompressed_bytes=50_000,
    )
    try:
        await rx.add_pole("pole-1")
        small = [await outbox.put(NewEvent("reading", {"i": i, "pad": "y" * 2000})) for i in range(12)]
        # Within what any receiver stores (sync.limits.MAX_DATA_BYTES), beyond what this one takes.
        huge = await outbox.put(NewEvent("reading", {"pad": os.urandom(27_500).hex()}))
        await run_until(uplink_for(outbox, rx), drained(outbox))
        assert sorted(e["id"] for e in await rx.all_events()) == sorted(r.id for r in small)
        (dead,) = await outbox.dead_letters()
        assert dead.id == huge.id and "413" in dead.reason
    finally:
        await stop_receiver(rx)


async def test_policy_refusal_becomes_a_dead_letter(tmp_path: Path, outbox: Outbox) -> None:
    rx = await start_receiver(
        f"sqlite:///{tmp_path / 'p.db'}", tmp_path / "m", policy=PolicyConfig(allowed_types=["ok"])
    )
    try:
        await rx.add_pole("pole-1")
        await outbox.put(NewEvent("ok", {}))
        refused = await outbox.put(NewEvent("other", {}))
        uplink = uplink_for(outbox, rx)
        await run_until(uplink, drained(outbox))
        (dead,) = await outbox.dead_letters()
        assert dead.id == refused.id and "policy" in dead.reason
        assert uplink.state.dead_lettered == 1
    finally:
        await stop_receiver(rx)


async def test_media_follows_its_event(outbox: Outbox, rx: RunningReceiver, faults: Faults) -> None:
    jpeg = real_jpeg(int.from_bytes(os.urandom(4)))
    sha = hashlib.sha256(jpeg).hexdigest()
    await outbox.put(NewEvent("presence", {"people": 1}, Priority.MEDIA, media=(jpeg,)))
    await outbox.put(NewEvent("presence", {"people": 2}, Priority.MEDIA, media=(jpeg,)))
    await run_until(uplink_for(outbox, rx), drained(outbox))
    stored = rx.receiver.ctx.media.path(sha)
    assert stored.read_bytes() == jpeg
    assert faults.media_requests == 1, "a JPEG the receiver has is not sent again"
    assert await outbox.media(sha) is None, "released once delivered"


async def test_a_clip_follows_its_event_as_video_mp4(outbox: Outbox, rx: RunningReceiver) -> None:
    from tests.test_media_checks import real_clip

    clip = real_clip()
    sha = hashlib.sha256(clip).hexdigest()
    await outbox.put(NewEvent("clip", {"seconds": 0.6}, Priority.MEDIA, media=(clip,)))
    await run_until(uplink_for(outbox, rx), drained(outbox))
    assert rx.receiver.ctx.media.path(sha, "video/mp4").read_bytes() == clip
    (event,) = await rx.all_events()
    assert event["media"] == [sha]


async def test_bandwidth_cap_paces_uploads(outbox: Outbox, rx: RunningReceiver) -> None:
    # Random hex gzips to half its size: about 145 KB on the wire at 40 KB/s, of which 64 KB is the burst.
    await outbox.put_many([NewEvent("reading", {"noise": os.urandom(3000).hex()}) for i in range(40)])
    uplink = uplink_for(outbox, rx, bandwidth_bytes_per_s=40_000, max_batch_events=2)
    started = time.monotonic()
    await run_until(uplink, drained(outbox))
    elapsed = time.monotonic() - started
    sent = uplink.state.bytes_sent
    assert sent > 110_000
    assert elapsed >= (sent - 64_000) / 40_000 * 0.9, (sent, elapsed)


async def test_idle_pole_sends_heartbeats(outbox: Outbox, rx: RunningReceiver, faults: Faults) -> None:
    uplink = uplink_for(outbox, rx, heartbeat_s=0.2)

    async def three_beats() -> bool:
        return faults.batch_requests >= 3

    await run_until(uplink, three_beats, timeout=5)
    (pole,) = await rx.store.poles()
    assert pole.last_seen is not None and pole.status is not None and "backlog" in pole.status
