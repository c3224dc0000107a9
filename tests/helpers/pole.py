"""A real pole daemon in a child process (``smartpole run``), for end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.web.login import hash_password

ROOT = Path(__file__).resolve().parents[2]
INGEST_TOKEN = "ingest-token-for-tests-0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


class PoleProcess:
    """Writes a pole config under ``workdir`` and runs the daemon; the local API port stays fixed across restarts."""

    def __init__(
        self, workdir: Path, receiver_url: str, token: str, extra_toml: str = "", **sections: dict[str, Any]
    ) -> None:
        """``sections`` add or override ``[table]`` keys; ``extra_toml`` is appended as is (``[[cameras]]`` ...)."""
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "pole.toml"
        tables: dict[str, dict[str, Any]] = {
            "pole": {"id": "pole-1"},
            "paths": {"state_dir": workdir / "state"},
            "http": {"port": self.port, "ingest_token": INGEST_TOKEN},
            # Tests post one event at a time and wait for each: the SD card's one-second commit
            # window (tests/test_outbox.py covers it) would make every such post wait for it.
            "outbox": {"commit_interval_ms": 20},
            "uplink": {
                "url": receiver_url,
                "bandwidth_bytes_per_s": 0,
                "backoff_initial_s": 0.05,
                "backoff_max_s": 0.5,
                "timeout_s": 1.0,
                "linger_s": 0.0,
                "heartbeat_s": 5.0,
            },
        }
        for name, values in sections.items():
            tables.setdefault(name, {}).update(values)
        lines = []
        for name, values in tables.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        self.config.write_text("\n".join(lines) + "\n" + extra_toml)
        self.env = dict(os.environ, SMARTPOLE_UPLINK_TOKEN=token, PYTHONPATH=str(ROOT))
        self.env.pop("JOURNAL_STREAM", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "pole.log"
        self.starts = 0

    headers = {"Authorization": f"Bearer {INGEST_TOKEN}"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        self.starts += 1
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smartpole.cli", "run", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.workdir,
        )
        listening = threading.Event()
        threading.Thread(target=self._pump, args=(self.proc, listening), daemon=True).start()
        if not listening.wait(timeout):
            self.kill()
            raise RuntimeError(f"pole did not start; see {self.log}:\n{self.log.read_text()[-3000:]}")

    def _pump(self, proc: subprocess.Popen[bytes], listening: threading.Event) -> None:
        assert proc.stdout is not None
        with self.log.open("ab") as out:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                if b'"event": "ready"' in line:
                    listening.set()

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait_until(self, predicate: Any, timeout: float = 30, interval: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met in {timeout}s; log tail:\n{self.log.read_text()[-2000:]}")
            time.sleep(interval)


@asynccontextmanager
async def standalone_pole(workdir: Path, password: str, **http: Any) -> AsyncIterator[PoleProcess]:
    """A pole with no receiver behind it (simulated uplink) and a status-page password, stopped cleanly after."""
    pole = PoleProcess(
        workdir,
        "http://127.0.0.1:9",
        "unused",
        uplink={"kind": "simulated"},
        http={"password_hash": hash_password(password), **http},
    )
    await asyncio.to_thread(pole.start)
    try:
        yield pole
    except BaseException:
        await asyncio.to_thread(pole.stop)
        raise
    assert await asyncio.to_thread(pole.stop) == 0, "the pole did not stop cleanly on SIGTERM"
