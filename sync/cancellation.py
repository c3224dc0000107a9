"""Awaiting a library call that may swallow a cancellation.

On Python 3.11 ``asyncio.wait_for`` returns the inner result instead of raising when a cancellation
arrives in the loop iteration in which the inner future completes (CPython gh-86296; 3.12 builds it on
``asyncio.timeout`` and raises). aiomqtt waits for every CONNACK, SUBACK and PUBACK that way, so a task
cancelled at that moment went on as if nothing had happened: a pole's uplink lane, cancelled as the
uplink stopped, retried its batch for ever and the stop never finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

T = TypeVar("T")


def _cancelling() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


async def cancellable(awaitable: Awaitable[T]) -> T:
    """``await awaitable``, raising the cancellation it may have swallowed."""
    before = _cancelling()
    result = await awaitable
    if _cancelling() > before:
        raise asyncio.CancelledError
    return result


async def enter(manager: AbstractAsyncContextManager[T]) -> T:
    """``manager.__aenter__()``; if that swallowed a cancellation, the manager is left again (a client
    that connected is disconnected) and the cancellation raised."""
    before = _cancelling()
    entered = await manager.__aenter__()
    if _cancelling() > before:
        await manager.__aexit__(None, None, None)
        raise asyncio.CancelledError
    return entered
