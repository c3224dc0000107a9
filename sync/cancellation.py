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
from typing import TypeVar

T = TypeVar("T")


async def cancellable(awaitable: Awaitable[T]) -> T:
    """``await awaitable``, raising the cancellation it may have swallowed."""
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    result = await awaitable
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
    return result
