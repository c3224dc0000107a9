"""The media store interface: content-addressed files, written once, read by readers, deleted by retention.

A file is named by its sha256 and kind (``image/jpeg`` or ``video/mp4``); the caller has checked
the hash and the content before :meth:`MediaStore.put`. A store that cannot be reached raises
:class:`MediaUnavailable`, which the receiver answers with 503, so a pole keeps the file and
sends it again later: nothing is lost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

KINDS = {"image/jpeg": ".jpg", "video/mp4": ".mp4"}


class MediaUnavailable(Exception):
    """The store cannot be reached or refused to work; retry later."""


def object_key(sha256: str, kind: str, prefix: str = "media/") -> str:
    """``media/ab/cd/<sha256>.jpg``: two levels of fan-out spread the keys over S3's prefixes."""
    return f"{prefix}{sha256[:2]}/{sha256[2:4]}/{sha256}{KINDS[kind]}"


@dataclass(frozen=True, slots=True)
class StoredMedia:
    """A file found in the store: its kind and size, and either a way to stream its bytes or a
    short-lived URL the client may fetch it from directly (a presigned S3 URL)."""

    kind: str
    size: int
    chunks: AsyncIterator[bytes] | None = None
    url: str | None = None


class MediaStore(Protocol):
    name: str

    async def close(self) -> None: ...

    async def check(self) -> None:
        """Raise :class:`MediaUnavailable` if the store cannot be used (readiness)."""
        ...

    async def exists(self, sha256: str, kind: str) -> bool: ...

    async def put(self, sha256: str, kind: str, data: bytes) -> None:
        """Store ``data`` durably under its name (idempotent)."""
        ...

    async def get(self, sha256: str) -> StoredMedia | None:
        """The file of a sha256, of whichever kind it is, or None."""
        ...

    async def delete(self, sha256: str) -> None:
        """Remove every kind stored under ``sha256`` (retention); absent files are fine."""
        ...
