"""Plate crops reach tesseract through temporary files: those files must live in memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from gateway.tmpfs import filesystem_type
from tests.conftest import ROOT


def test_filesystem_type_reads_mountinfo(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        "25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw\n"
        "40 27 0:30 / /run rw - tmpfs tmpfs rw\n"
    )
    assert filesystem_type("/dev/shm/x/y", mountinfo) == "tmpfs"
    assert filesystem_type("/run/smartpole", mountinfo) == "tmpfs"
    assert filesystem_type("/var/lib/smartpole", mountinfo) == "ext4"
    assert filesystem_type("/running", mountinfo) == "ext4", "a prefix of a name is not a mount point"


def test_tesseract_temp_files_are_created_in_memory(child_env: dict[str, str]) -> None:
    """The daemon's start-up set-up, then a real plate read: every temporary file pytesseract made
    was on a memory file system, and none is left behind."""
    script = textwrap.dedent(
        """
        import os, tempfile, pytesseract.pytesseract as pt
        import cv2
        from gateway.tmpfs import filesystem_type, use_memory_for_temp_files
        from models.ocr import TesseractRecogniser

        scratch = use_memory_for_temp_files()
        made = []
        real = pt.NamedTemporaryFile
        def spy(*args, **kwargs):
            f = real(*args, **kwargs)
            made.append(f.name)
            return f
        pt.NamedTemporaryFile = spy
        image = cv2.imread("tests/data/vehicles/voc2011_000025_bus_plate.jpg")
        TesseractRecogniser().read(image[300:337, 205:305])
        assert made, "tesseract was given no file"
        assert all(filesystem_type(m) in ("tmpfs", "ramfs") for m in made), made
        assert all(m.startswith(str(scratch)) for m in made), made
        assert not [m for m in made if os.path.exists(m)], "temporary files left behind"
        print("ok", scratch)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=child_env, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok /")


def test_smartpole_run_moves_temporary_files_to_memory_before_serving(child_env: dict[str, str]) -> None:
    """``run_daemon`` (what ``smartpole run`` calls) sets the memory directory up before the daemon starts."""
    script = textwrap.dedent(
        """
        import tempfile
        from pathlib import Path
        import gateway.daemon as daemon
        from gateway.config import PoleConfig
        from gateway.tmpfs import temp_files_in_memory

        async def serve(path, config):
            print("in memory" if temp_files_in_memory() else "on disk:", tempfile.gettempdir())
            return 0

        daemon.serve = serve
        raise SystemExit(daemon.run_daemon(PoleConfig(), Path("pole.toml")))
        """
    )
    env = dict(child_env, TMPDIR="/var/tmp")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("in memory"), result.stdout
