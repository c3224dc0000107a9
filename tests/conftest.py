"""Shared fixtures. Tests use real SQLite files, real servers on 127.0.0.1 and real processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def smartpole_cmd() -> list[str]:
    """The CLI as a subprocess command, from this checkout."""
    return [sys.executable, "-m", "gateway.cli"]


@pytest.fixture
def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("JOURNAL_STREAM", None)
    return env
