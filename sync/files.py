"""Files only their owner may read or write, whatever the umask: the pole's outbox (events,
redacted pictures) and the receiver's database and media are nobody else's business."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parent, each created one ``0700`` (a directory that exists
    already keeps its mode: it may be shared, and it is its owner's to set)."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(directory, DIR_MODE)  # mkdir's mode went through the umask
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` if missing, and make it and an SQLite database's side files ``0600``."""
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        with contextlib.suppress(PermissionError):  # not ours to change: leave it as its owner set it
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for suffix in SQLITE_SIDE_FILES:
        with contextlib.suppress(FileNotFoundError, PermissionError):
            os.chmod(f"{path}{suffix}", FILE_MODE)
    return path


def write_atomically(path: Path, data: bytes, prefix: str = ".incoming-") -> None:
    """Write ``data`` to ``path`` so that a crash or power cut leaves the old file or the whole new
    one: a temporary file beside it (``0600``, mkstemp's mode) written and fsynced, renamed over
    ``path``, then the directory fsynced so the rename itself is durable. The directory is made
    ``0700`` if missing."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
