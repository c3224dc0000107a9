"""Temporary files in memory only.

pytesseract hands images to the tesseract program through temporary files,
and what it hands over is a cleaned crop of a licence plate: part of a raw
frame, which must never touch disk. So the daemon and replay point Python's
temporary directory at a memory-backed file system before any model runs:
systemd's ``$RUNTIME_DIRECTORY`` (under /run, a tmpfs) or ``/dev/shm``. Where
there is none, tesseract is not used (see ``gateway.vision.setup``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


def filesystem_type(path: Path | str, mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """The type of the file system holding ``path``, from the longest mount point above it."""
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "-" not in fields:
            continue
        mount_point = fields[4].replace("\\040", " ")
        fs_type = fields[fields.index("-") + 1]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) >= best[0]):
            best = (len(mount_point), fs_type)
    return best[1] if best else None


def in_memory(path: Path | str) -> bool:
    return filesystem_type(path) in MEMORY_FILESYSTEMS


def temp_files_in_memory() -> bool:
    """True when Python's temporary files (and so pytesseract's) land in memory."""
    return in_memory(tempfile.gettempdir())


def use_memory_for_temp_files() -> Path | None:
    """Make a private directory on a memory file system the process's temporary directory.

    Returns it, or None (and logs why) when the machine offers none. Removed at exit.
    """
    candidates = [os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0], "/dev/shm"]
    for base in filter(None, candidates):
        if not (os.path.isdir(base) and os.access(base, os.W_OK) and in_memory(base)):
            continue
        scratch = Path(tempfile.mkdtemp(prefix="smartpole-", dir=base))
        tempfile.tempdir = str(scratch)
        os.environ["TMPDIR"] = str(scratch)
        atexit.register(shutil.rmtree, scratch, True)
        return scratch
    log.error("no_memory_temp_dir", tried=[c for c in candidates if c], detail="tesseract will not be used")
    return None
