"""No secret and no plate text in a log line, whatever fails: tracebacks carry no local variables,
and a scrubbing step removes bearer tokens, passwords and plate fields from what is logged.

Real processes where the fault was: a receiver whose database goes away (its token lookup used to
raise with the pole's token in a local variable) and a pole whose uplink crashes (the
Authorization header was a local of the crashing frame)."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import uuid_utils
from pydantic import SecretStr

from gateway.logs import configure_logging
from gateway.supervisor import Supervisor
from receiver.auth import new_token, token_hash
from receiver.store.factory import open_store
from sync.protocol import encode_batch
from tests.conftest import ROOT, pg_schema, start_receiver, stop_receiver
from tests.helpers.pole import PoleProcess, free_port
from tests.helpers.tcpproxy import TcpProxy

PLATE = "EBY584Q"
DB_PASSWORD = "db-pass-9f8e7d6c"


def leaks(text: str, *secrets: str) -> list[str]:
    return [s for s in secrets if s in text]


def plate_batch(pole_id: str) -> bytes:
    event = {
        "id": str(uuid_utils.uuid7()),
        "seq": 1,
        "ts": time.time(),
        "type": "plate_read",
        "priority": "event",
        "location": None,
        "data": {"plate_policy": "keep", "plate_text": PLATE},
        "media": [],
    }
    return gzip.compress(encode_batch(pole_id, str(uuid_utils.uuid7()), time.time(), [json.dumps(event)], None))


async def test_receiver_without_its_database_answers_503_and_logs_no_token(tmp_path: Path) -> None:
    async with pg_schema() as url:
        token, reader = new_token(), new_token()
        store = await open_store(url, 1)
        await store.add_token(token_hash(token), "pole", "pole-1", None)
        await store.add_token(token_hash(reader), "reader", None, "tests")
        await store.close()
        proxy = TcpProxy("127.0.0.1", int(url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]))
        await proxy.start()
        via_proxy = url.replace("postgres@", f"postgres:{DB_PASSWORD}@", 1)
        via_proxy = via_proxy.replace(url.split("@", 1)[1].split("/", 1)[0], f"127.0.0.1:{proxy.port}", 1)
        port = free_port()
        config = tmp_path / "receiver.toml"
        config.write_text(
            f'[receiver]\nport = {port}\ndatabase_url = "{via_proxy}"\nmedia_dir = "{tmp_path / "media"}"\n'
            '[policy]\nforbid_plate_text = false\n[logging]\nformat = "json"\n'
        )
        env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "smartpole.cli", "receiver", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as s:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        async with s.get(base + "/health") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    assert time.monotonic() < deadline and proc.poll() is None, "receiver did not start"
                    await asyncio.sleep(0.1)
                pole = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
                pole["Content-Encoding"] = "gzip"
                async with s.post(base + "/v1/batches", data=plate_batch("pole-1"), headers=pole) as r:
                    assert r.status == 200, await r.text()

                await proxy.cut()  # the database is gone
                async with s.post(base + "/v1/batches", data=plate_batch("pole-1"), headers=pole) as r:
                    assert r.status == 503, await r.text()
                    assert "database" in (await r.json())["error"]
                async with s.get(base + "/v1/events", headers={"Authorization": f"Bearer {reader}"}) as r:
                    assert r.status == 503, await r.text()
                async with s.get(base + "/health/ready") as r:
                    assert r.status == 503
                    assert DB_PASSWORD not in await r.text()
                async with s.get(base + "/health") as r:  # alive: restarting it would not bring the database back
                    assert r.status == 200
        finally:
            proc.terminate()
            output = proc.communicate(timeout=30)[0].decode()
            await proxy.cut()
    assert "store_unavailable" in output, output[-2000:]
    assert not leaks(output, token, token[4:20], reader[4:20], DB_PASSWORD, PLATE), output[-4000:]


async def test_pole_uplink_crash_logs_no_authorization_header(tmp_path: Path) -> None:
    port = free_port()
    rx = await start_receiver(f"sqlite:///{tmp_path / 'rx.db'}", tmp_path / "media", port=port)
    token = await rx.add_pole("pole-1")
    (tmp_path / "pole").mkdir()
    pole = PoleProcess(tmp_path / "pole", f"http://127.0.0.1:{port}", token, uplink={"heartbeat_s": 0.2})
    await asyncio.to_thread(pole.start)
    try:
        # The state directory vanishes under the running daemon: the status every batch carries
        # cannot be built, and the uplink crashes on each attempt.
        shutil.rmtree(tmp_path / "pole" / "state")
        await asyncio.to_thread(
            pole.wait_until, lambda: any(r.get("event") == "component_crashed" for r in pole.log_records())
        )
    finally:
        await asyncio.to_thread(pole.stop)
        await stop_receiver(rx)
    text = pole.log.read_text()
    crash = next(r for r in pole.log_records() if r.get("event") == "component_crashed")
    assert crash["component"] == "uplink" and "exception" in crash
    assert not leaks(text, token, token[4:20], "Bearer spt_"), text[-4000:]


def crashing_component(plate_text: str, token: SecretStr, headers: dict[str, str]) -> Any:
    async def run() -> None:
        reading = {"plate_text": plate_text, "confidence": 0.9}  # noqa: F841 (a local, as a plate reader has)
        bearer = token.get_secret_value()  # noqa: F841
        raise RuntimeError("the OCR engine failed")

    return run


@pytest.mark.parametrize("fmt", ["json", "console"])
async def test_no_secret_in_any_log_format(fmt: str) -> None:
    out = io.StringIO()
    configure_logging("debug", fmt, stream=out, pole_id="p")  # type: ignore[arg-type]
    try:
        secret = "spt_" + "s3cr3t" * 6
        supervisor = Supervisor(backoff_initial_s=0.01, backoff_max_s=0.01)
        component = crashing_component(PLATE, SecretStr(secret), {"Authorization": f"Bearer {secret}"})
        task = asyncio.create_task(supervisor.supervise("plates", component))
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        log = structlog.get_logger("test")
        log.info("said_too_much", plate_text=PLATE, password="hunter2-hunter2", token=SecretStr(secret))
        log.warning("header", headers={"Authorization": f"Bearer {secret}"}, error=f"refused Bearer {secret}")
        log.error("url", url=f"postgresql://u:{DB_PASSWORD}@db/x")
    finally:
        configure_logging("info", "json")
    text = out.getvalue()
    assert "component_crashed" in text and "the OCR engine failed" in text, text
    assert not leaks(text, secret, secret[4:20], PLATE, "hunter2", DB_PASSWORD), text
