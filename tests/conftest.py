"""Shared fixtures. Tests use real SQLite files, real servers on 127.0.0.1, the real
PostgreSQL on 127.0.0.1:5432 and real processes.

``SMARTPOLE_REQUIRE_SERVICES=1`` (set by .ci/run) turns a missing PostgreSQL into a
failure instead of a skip.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from pydantic import SecretStr

from receiver.app import Receiver
from receiver.auth import new_token, token_hash
from receiver.config import DashboardSection, ReceiverSection
from receiver.mediastore.base import MediaStore
from receiver.policy import PolicyConfig
from receiver.store.base import Store
from receiver.store.factory import open_store

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
PG_URL = os.environ.get("SMARTPOLE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_SERVICES = os.environ.get("SMARTPOLE_REQUIRE_SERVICES") == "1"


def service_missing(what: str, error: BaseException) -> None:
    message = f"{what} is not reachable: {error}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (SMARTPOLE_REQUIRE_SERVICES=1)")
    pytest.skip(message)


@pytest.fixture
def smartpole_cmd() -> list[str]:
    """The CLI as a subprocess command, from this checkout."""
    return [sys.executable, "-m", "smartpole.cli"]


@pytest.fixture
def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("JOURNAL_STREAM", None)
    return env


@contextlib.asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    try:
        admin = await asyncpg.connect(PG_URL, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        service_missing(f"PostgreSQL at {PG_URL}", exc)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}{'&' if '?' in PG_URL else '?'}search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test that takes it runs once per receiver backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'receiver.db'}"
        return
    async with pg_schema() as url:
        yield url


class RunningReceiver:
    """A receiver served in this process on 127.0.0.1, with a registered pole and reader."""

    def __init__(self, store: Store, receiver: Receiver, runner: web.AppRunner, url: str) -> None:
        self.store = store
        self.receiver = receiver
        self.runner = runner
        self.url = url
        self.tokens: dict[str, str] = {}

    async def add_pole(self, pole_id: str) -> str:
        token = new_token()
        await self.store.add_token(token_hash(token), "pole", pole_id, None)
        self.tokens[pole_id] = token
        return token

    async def add_reader(self) -> str:
        token = new_token()
        await self.store.add_token(token_hash(token), "reader", None, "tests")
        return token

    async def all_events(self) -> list[dict[str, Any]]:
        from receiver.store.base import EventQuery

        out: list[dict[str, Any]] = []
        after = 0
        while True:
            page = await self.store.query_events(EventQuery(after=after, limit=1000))
            out.extend(page.events)
            if page.next_cursor is None:
                return out
            after = page.next_cursor


async def start_receiver(
    database_url: str,
    media_dir: Path,
    port: int = 0,
    middlewares: Iterable[Any] = (),
    policy: PolicyConfig | None = None,
    media: MediaStore | None = None,
    dashboard: DashboardSection | None = None,
    **section: Any,
) -> RunningReceiver:
    """``media`` defaults to files under ``media_dir``."""
    config = ReceiverSection(port=port, database_url=SecretStr(database_url), media_dir=media_dir, **section)
    store = await open_store(database_url, 4)
    receiver = Receiver(config, policy or PolicyConfig(), store, media=media, dashboard=dashboard)
    runner = web.AppRunner(receiver.make_app(middlewares), access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    return RunningReceiver(store, receiver, runner, f"http://127.0.0.1:{bound}")


async def stop_receiver(running: RunningReceiver) -> None:
    await running.runner.cleanup()
    await running.receiver.ctx.media.close()
    await running.store.close()


@pytest.fixture
async def receiver(database_url: str, tmp_path: Path) -> AsyncIterator[RunningReceiver]:
    running = await start_receiver(database_url, tmp_path / "media")
    await running.add_pole("pole-1")
    yield running
    await stop_receiver(running)
