"""What the pole and the receiver keep on disk is private to their user whatever the umask:
the outbox and its directory, the receiver's SQLite file, its media directory and files."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from sync.events import NewEvent
from sync.outbox import Outbox
from tests.conftest import start_receiver, stop_receiver
from tests.test_media_checks import real_jpeg


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask, as a careless service manager might leave it."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_outbox_is_private(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "state" / "outbox.db"
    box = await Outbox.open(path)
    try:
        await box.put(NewEvent("reading", {"i": 1}))
        assert mode(path.parent) == 0o700
        for name in ("outbox.db", "outbox.db-wal", "outbox.db-shm"):
            assert mode(path.parent / name) == 0o600, name
    finally:
        await box.close()
    path.chmod(0o644)  # a file from before: tightened when opened
    box = await Outbox.open(path)
    await box.close()
    assert mode(path) == 0o600


async def test_the_receivers_files_are_private(tmp_path: Path, open_umask: None) -> None:
    db = tmp_path / "receiver" / "receiver.db"
    media = tmp_path / "receiver" / "media"
    rx = await start_receiver(f"sqlite:///{db}", media)
    try:
        token = await rx.add_pole("pole-1")
        body = real_jpeg(7)
        sha = hashlib.sha256(body).hexdigest()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"}
        async with aiohttp.ClientSession() as s, s.put(f"{rx.url}/v1/media/{sha}", data=body, headers=headers) as r:
            assert r.status == 201
        assert mode(db.parent) == 0o700 and mode(db) == 0o600
        assert mode(media) == 0o700
        stored = rx.receiver.ctx.media.path(sha)
        assert mode(stored.parent) == 0o700 and mode(stored) == 0o600
    finally:
        await stop_receiver(rx)
