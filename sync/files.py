"""Files only their owner may read or write, whatever the umask: the pole's outbox (events,
redacted pictures) and the receiver's database and media are nobody else's business."""

from __future__ import annotations

import contextlib
import os
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
