"""Ending an SQLite transaction of an aiosqlite connection, whatever interrupts it.

aiosqlite runs each statement on the connection's own thread. A task cancelled while its
``BEGIN`` or ``COMMIT`` is on the way there has its statement run all the same, and a rollback
awaited in that cancelled task may be cancelled again: either way the connection can be left
inside a transaction, and every later ``BEGIN`` fails with "cannot start a transaction within a
transaction" until the process restarts. :func:`rollback` finishes the rollback even through
repeated cancellations (it is quick), so the connection is always clean when the caller's
exception goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import aiosqlite


async def _rollback(db: aiosqlite.Connection) -> None:
    # "No transaction is active" is fine: the BEGIN never ran, the COMMIT did, or SQLite rolled back itself.
    with contextlib.suppress(sqlite3.OperationalError):
        await db.execute("ROLLBACK")


async def rollback(db: aiosqlite.Connection) -> None:
    """Roll back whatever transaction the connection is in (none is fine), to completion; a
    cancellation that came meanwhile is raised once the connection is clean."""
    done = asyncio.ensure_future(_rollback(db))
    cancelled = False
    while not done.done():
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
