"""Opening the store a database URL names."""

from __future__ import annotations

from receiver.store.base import Store
from receiver.store.postgres import PostgresStore
from receiver.store.sqlite import SqliteStore


async def open_store(database_url: str, pool_size: int = 8, wait: bool = True) -> Store:
    """Open the backend the URL names: ``sqlite:///path`` or ``postgresql://...``. Without ``wait``,
    PostgreSQL is connected to (and migrated) on first use, so a receiver starts while it is away."""
    if database_url.startswith("sqlite:///"):
        return await SqliteStore.open(database_url.removeprefix("sqlite:///"))
    if database_url.startswith(("postgresql://", "postgres://")):
        return await PostgresStore.open(database_url, pool_size, wait)
    raise ValueError(f"database_url must start with sqlite:/// or postgresql://, not {database_url.split(':')[0]!r}")
