"""systemd integration: unit files verify, and the real daemon speaks sd_notify on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ROOT
from tests.helpers.pole import INGEST_TOKEN, PoleProcess

UNITS = ["smartpole-gateway.service", "smartpole-receiver.service"]


@pytest.mark.parametrize("unit", UNITS)
def test_unit_files_verify(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (Debian package systemd; bin/setup --dev installs it)"
    text = (ROOT / "systemd" / unit).read_text()
    installed = "/opt/smartpole/venv/bin/smartpole"
    assert f"ExecStart={installed} " in text
    # verify checks that ExecStart exists; point it at this checkout's entry point, change nothing else.
    local = tmp_path / unit
    local.write_text(text.replace(installed, str(Path(sys.executable).parent / "smartpole")))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"systemd-analyze complained:\n{result.stderr}"


def test_gateway_unit_is_a_hardened_notify_service() -> None:
    text = (ROOT / "systemd" / "smartpole-gateway.service").read_text()
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "StartLimitBurst=",
        "User=smartpole",
        "StateDirectory=smartpole",
        "ConfigurationDirectory=smartpole",
        "SupplementaryGroups=video dialout",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "MemoryMax=",
    ]:
        assert line in text, line


def test_install_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(ROOT / "systemd" / "install.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, timeout: float = 30) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        seen = len(self.messages)
        while time.monotonic() < deadline:
            for _, fields in self.messages[seen:]:
                if key in fields:
                    return fields
            seen = len(self.messages)
            self.pump(0.2)
        raise AssertionError(f"no {key} in {self.messages[-5:]}")

    def count(self, key: str, since: float) -> int:
        return sum(1 for t, f in self.messages if t >= since and key in f)


def start_notified_pole(tmp_path: Path, watchdog_s: float) -> tuple[PoleProcess, NotifySocket]:
    notify = NotifySocket(tmp_path / "notify.sock")
    pole = PoleProcess(
        tmp_path,
        "http://127.0.0.1:9",
        "unused",
        uplink={"kind": "simulated"},
    )
    pole.env.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=str(int(watchdog_s * 1_000_000)))
    pole.start()
    return pole, notify


def test_ready_watchdog_status_and_stopping(tmp_path: Path) -> None:
    pole, notify = start_notified_pole(tmp_path, watchdog_s=1.0)
    try:
        notify.wait_for("READY")
        since = time.monotonic()
        notify.pump(2.6)
        assert notify.count("WATCHDOG", since) >= 4, "fed every half WATCHDOG_USEC"
        statuses = [f["STATUS"] for _, f in notify.messages if "STATUS" in f]
        assert any("backlog" in s for s in statuses), statuses
        assert pole.proc is not None
        started = time.monotonic()
        pole.proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING", timeout=10)
        assert pole.proc.wait(10) == 0
        assert time.monotonic() - started < 10
    finally:
        pole.kill()


async def test_wedged_outbox_writer_starves_the_watchdog(tmp_path: Path) -> None:
    pole, notify = start_notified_pole(tmp_path, watchdog_s=1.0)
    try:
        notify.wait_for("READY")
        notify.wait_for("WATCHDOG")
        # Another process takes the database: every commit now waits out SQLite's busy timeout.
        lock = sqlite3.connect(tmp_path / "state" / "outbox.db", isolation_level=None, timeout=0)
        lock.execute("BEGIN EXCLUSIVE")
        headers = {"Authorization": f"Bearer {INGEST_TOKEN}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            request = asyncio.ensure_future(
                session.post(pole.url + "/v1/events", json={"type": "probe"}, headers=headers)
            )
            await asyncio.to_thread(notify.pump, 1.5)  # also drains what was sent before the wedge
            since = time.monotonic()
            await asyncio.to_thread(notify.pump, 2.0)
            assert notify.count("WATCHDOG", since) == 0, "a wedged writer must not be reported alive"
            stuck = [f["STATUS"] for t, f in notify.messages if t >= since and "STATUS" in f]
            assert any("outbox writer" in s for s in stuck), stuck
            lock.execute("ROLLBACK")
            lock.close()
            (await request).release()
        notify.pump(0.2)
        since = time.monotonic()
        notify.pump(2.0)
        assert notify.count("WATCHDOG", since) >= 2, "fed again once the writer moves"
    finally:
        pole.kill()


def test_notifier_reaches_an_abstract_socket() -> None:
    from gateway.systemd import Notifier

    name = f"smartpole-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(5)
    try:
        notifier = Notifier(address="@" + name)
        notifier.send(READY=1, STATUS="hello")
        assert server.recv(100) == b"READY=1\nSTATUS=hello"
        notifier.close()
    finally:
        server.close()
    assert not Notifier(address="").enabled


class _StallingVideo(http.server.BaseHTTPRequestHandler):
    """Serves the start of a video, then holds the connection open and silent: a stalled camera."""

    video: bytes = b""
    stall_s = 30.0

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(200)
        self.send_header("Content-Type", "video/x-msvideo")
        self.send_header("Content-Length", str(len(self.video)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(self.video[:400_000])
            self.wfile.flush()
            time.sleep(self.stall_s)

    def log_message(self, *args: object) -> None:
        pass


def test_stalled_camera_thread_starves_the_watchdog(tmp_path: Path) -> None:
    _StallingVideo.video = (ROOT / "tests" / "data" / "video" / "vtest_12s.avi").read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StallingVideo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    camera = (
        f'\n[[cameras]]\nname = "street"\nsource = "http://127.0.0.1:{server.server_address[1]}/street.avi"\n'
        'kind = "stream"\nread_timeout_s = 6.0\n\n[vision.inference]\nbackend = "simulated"\n'
    )
    notify = NotifySocket(tmp_path / "notify.sock")
    pole = PoleProcess(tmp_path, "http://127.0.0.1:9", "unused", extra_toml=camera, uplink={"kind": "simulated"})
    pole.env.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="1000000")
    pole.start()
    try:
        notify.wait_for("READY")
        pole.wait_until(lambda: any(r.get("event") == "camera_up" for r in pole.log_records()))
        stuck = notify.wait_for("STATUS", timeout=20)
        deadline = time.monotonic() + 20
        while "camera thread street" not in stuck.get("STATUS", "") and time.monotonic() < deadline:
            stuck = notify.wait_for("STATUS", timeout=20)
        assert "camera thread street" in stuck["STATUS"], stuck
        since = time.monotonic()
        notify.pump(2.0)
        assert notify.count("WATCHDOG", since) == 0, "a camera thread stuck in a read must not be reported alive"
    finally:
        pole.kill()
        server.shutdown()
