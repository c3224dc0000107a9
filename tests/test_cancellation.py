"""A task cancelled in the middle of an SQLite transaction (a receiver's MQTT handler when the broker
goes, an uplink stopping) leaves the connection clean: the next transaction starts, nothing is
stuck "within a transaction". Cancelled at every await point in turn."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from receiver.store.sqlite import SqliteStore
from sync.cancellation import cancellable, enter
from sync.events import NewEvent
from sync.outbox import Outbox, OutboxConfig
from sync.protocol import WireEvent
from tests.test_poison import wire_event

STEPS = 12  # loop turns after which to cancel: from before BEGIN reaches SQLite to after COMMIT


async def cancel_after(steps: int, work: Callable[[], Awaitable[object]]) -> None:
    task = asyncio.ensure_future(work())
    for _ in range(steps):
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_cancelled_batch_insert_leaves_the_receivers_store_usable(tmp_path: Path) -> None:
    store = await SqliteStore.open(str(tmp_path / "rx.db"))
    try:
        await store.add_token("0" * 64, "pole", "pole-1", None)
        for steps in range(STEPS):
            events = [WireEvent.model_validate(wire_event(steps * 10 + i + 1)) for i in range(3)]
            await cancel_after(steps, lambda ev=events: store.insert_batch("pole-1", "b", ev, None, time.time()))
            result = await store.insert_batch("pole-1", "b", events, None, time.time())
            assert sorted(result.accepted + result.duplicates) == sorted(e.id for e in events), steps
    finally:
        await store.close()


async def test_a_cancelled_rejection_leaves_the_outbox_usable(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "outbox.db", OutboxConfig(commit_interval_ms=0))
    try:
        for steps in range(STEPS):
            (a, b) = await box.put_many([NewEvent("reading", {"i": steps}), NewEvent("reading", {"j": steps})])
            await cancel_after(steps, lambda a=a: box.reject_many({a.id: "refused"}))
            await box.reject_many({a.id: "refused"})
            assert await box.ack([b.id]) == 1, steps
        assert box.backlog == 0
    finally:
        await box.close()


async def test_a_cancellation_that_wait_for_swallows_is_raised_again() -> None:
    """The library pattern itself: an acknowledgement and a cancellation in one loop iteration. Python 3.11's
    ``wait_for`` returns the acknowledgement; ``cancellable`` raises the cancellation all the same."""
    loop = asyncio.get_running_loop()
    acknowledged: asyncio.Future[str] = loop.create_future()
    task = asyncio.ensure_future(cancellable(asyncio.wait_for(acknowledged, timeout=10)))
    await asyncio.sleep(0)
    acknowledged.set_result("PUBACK")
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done and task.cancelled()


async def test_cancellable_passes_results_and_errors_through() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def fail() -> None:
        await asyncio.sleep(0)
        raise OSError("broker gone")

    assert await cancellable(answer()) == 42
    with pytest.raises(OSError, match="broker gone"):
        await cancellable(fail())


async def test_entering_that_swallows_a_cancellation_leaves_again_and_raises() -> None:
    class Connection:
        def __init__(self) -> None:
            self.open = False

        async def __aenter__(self) -> Connection:
            with contextlib.suppress(asyncio.CancelledError):  # as wait_for does when CONNACK and cancel coincide
                await asyncio.sleep(10)
            self.open = True
            return self

        async def __aexit__(self, *exc: object) -> None:
            self.open = False

    connection = Connection()
    task = asyncio.ensure_future(enter(connection))
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done and task.cancelled() and not connection.open
