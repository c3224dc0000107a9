"""Media in a local directory (the pilot's default): ``<dir>/ab/<sha256>.jpg``, written atomically."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from receiver.mediastore.base import KINDS, MediaUnavailable, StoredMedia
from sync.files import private_dir, write_atomically

_CHUNK = 256 * 1024


class LocalMediaStore:
    name = "local"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, sha256: str, kind: str = "image/jpeg") -> Path:
        return self.directory / sha256[:2] / f"{sha256}{KINDS[kind]}"

    async def close(self) -> None:
        return None

    async def check(self) -> None:
        try:
            await asyncio.to_thread(private_dir, self.directory)
        except OSError as exc:
            raise MediaUnavailable(f"media directory {self.directory}: {exc.strerror or exc}") from exc

    async def exists(self, sha256: str, kind: str) -> bool:
        return self.path(sha256, kind).exists()

    async def put(self, sha256: str, kind: str, data: bytes) -> None:
        try:
            await asyncio.to_thread(write_atomically, self.path(sha256, kind), data)
        except OSError as exc:
            raise MediaUnavailable(f"cannot write media: {exc.strerror or exc}") from exc

    async def get(self, sha256: str) -> StoredMedia | None:
        for kind in KINDS:
            path = self.path(sha256, kind)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            return StoredMedia(kind, size, chunks=_read_chunks(path))
        return None

    async def delete(self, sha256: str) -> None:
        for kind in KINDS:
            self.path(sha256, kind).unlink(missing_ok=True)


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, _CHUNK):
            yield chunk
