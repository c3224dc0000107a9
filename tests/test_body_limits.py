"""Request bodies are bounded while they are read, whatever their framing, and gzip is inflated
step by step against a running limit, a few at a time: chunked bodies cannot bypass the limits,
and gzip bombs neither raise the receiver's memory beyond a stated bound nor stall it."""

from __future__ import annotations

import asyncio
import gzip
import os
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import uuid_utils

from gateway.web.ingest import make_ingest_handler
from gateway.web.server import HttpConfig, LocalServer
from receiver.auth import new_token, token_hash
from receiver.store.factory import open_store
from sync.outbox import Outbox
from sync.protocol import encode_batch
from tests.conftest import ROOT, start_receiver, stop_receiver
from tests.helpers.pole import free_port

MB = 1 << 20


def gzip_bomb(megabytes: int) -> bytes:
    """A gzip stream of ``megabytes`` MB of zeros in about 1 KB per MB (its trailer is not checked
    by anyone: every reader must give up long before the end)."""
    zeros = b"\0" * MB
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    return head + block * (megabytes - 1) + c.flush()


async def chunked(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """The body as chunked transfer encoding: no Content-Length for the server to check first."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


def a_batch(pad: int) -> bytes:
    event = {
        "id": str(uuid_utils.uuid7()),
        "seq": 1,
        "ts": time.time(),
        "type": "reading",
        "priority": "event",
        "location": None,
        "data": {"pad": "x" * 100},
        "media": [],
    }
    doc = encode_batch("pole-1", str(uuid_utils.uuid7()), time.time(), [orjson.dumps(event).decode()], None)
    return doc[:-1] + b" " * pad + b"}"  # whitespace: still valid JSON


async def test_receiver_bounds_chunked_bodies_and_refuses_other_encodings(tmp_path: Path) -> None:
    rx = await start_receiver(
        f"sqlite:///{tmp_path / 'rx.db'}",
        tmp_path / "media",
        max_body_bytes=1_000_000,
        max_decompressed_bytes=4_000_000,
        max_media_bytes=500_000,
    )
    token = await rx.add_pole("pole-1")
    auth = {"Authorization": f"Bearer {token}"}
    json_ = {**auth, "Content-Type": "application/json"}
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(rx.url + "/v1/batches", data=chunked(a_batch(2_000_000)), headers=json_) as r:
                assert r.status == 413, await r.text()
                assert "1000000" in (await r.json())["error"]
            gz = {**json_, "Content-Encoding": "gzip"}
            async with s.post(rx.url + "/v1/batches", data=chunked(gzip_bomb(64)), headers=gz) as r:
                assert r.status == 413, await r.text()
                assert "decompressed" in (await r.json())["error"]
            async with s.post(rx.url + "/v1/batches", data=chunked(gzip.compress(a_batch(0))), headers=gz) as r:
                assert r.status == 200, await r.text()
            async with s.post(rx.url + "/v1/batches", data=a_batch(0), headers=json_) as r:
                assert r.status == 200, "plain JSON still goes"
            async with s.post(
                rx.url + "/v1/batches", data=a_batch(0), headers={**json_, "Content-Encoding": "br"}
            ) as r:
                assert r.status == 415
            sha = "0" * 64
            media = {**auth, "Content-Type": "image/jpeg"}
            async with s.put(f"{rx.url}/v1/media/{sha}", data=chunked(os.urandom(600_000)), headers=media) as r:
                assert r.status == 413, await r.text()
    finally:
        await stop_receiver(rx)


async def test_pole_ingest_bounds_chunked_bodies_and_takes_no_gzip(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db")
    server = LocalServer(HttpConfig(port=0, max_body_bytes=100_000))
    server.app.router.add_post("/v1/events", make_ingest_handler(box, lambda: None, 50, max_body_bytes=100_000))
    await server.start()
    url = f"http://127.0.0.1:{server.port}/v1/events"
    json_ = {"Content-Type": "application/json"}
    try:
        async with aiohttp.ClientSession() as s:
            big = orjson.dumps({"type": "x", "data": {"pad": "y" * 200_000}})
            async with s.post(url, data=chunked(big), headers=json_) as r:
                assert r.status == 413
            async with s.post(url, data=gzip_bomb(64), headers={**json_, "Content-Encoding": "gzip"}) as r:
                assert r.status == 415
        assert box.backlog == 0
    finally:
        await server.stop()
        await box.close()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


# The bound README.md states: the receiver's RSS rises by at most
#   max_concurrent_decompressions x max_decompressed_bytes (x 1.25 for buffer growth) + 40 MB,
# with the defaults 2 x 64 MB x 1.25 + 40 MB = 200 MB, however many bombs arrive at once.
RSS_RISE_BOUND_MB = 2 * 64 * 1.25 + 40


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
async def test_concurrent_gzip_bombs_keep_memory_bounded_and_health_answering(tmp_path: Path) -> None:
    db = tmp_path / "rx.db"
    token = new_token()
    store = await open_store(f"sqlite:///{db}")
    await store.add_token(token_hash(token), "pole", "pole-1", None)
    await store.close()
    port = free_port()
    config = tmp_path / "receiver.toml"
    config.write_text(
        f'[receiver]\nport = {port}\ndatabase_url = "sqlite:///{db}"\nmedia_dir = "{tmp_path / "media"}"\n'
        '[logging]\nformat = "json"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "smartpole.cli", "receiver", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    base = f"http://127.0.0.1:{port}"
    bomb = gzip_bomb(1024)  # 1 GB of zeros in about 1 MB
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Content-Encoding": "gzip"}
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
            for _ in range(3):  # warm up: a few ordinary batches, so the baseline is a working receiver
                async with s.post(base + "/v1/batches", data=gzip.compress(a_batch(0)), headers=headers) as r:
                    assert r.status == 200
            baseline = rss_mb(proc.pid)

            async def bombard() -> list[int]:
                async def one() -> int:
                    async with s.post(base + "/v1/batches", data=bomb, headers=headers) as r:
                        return r.status

                return list(await asyncio.gather(*(one() for _ in range(4))))

            peak = baseline
            health: list[float] = []
            attack = asyncio.ensure_future(bombard())
            while not attack.done():
                peak = max(peak, rss_mb(proc.pid))
                started = time.perf_counter()
                async with s.get(base + "/health", timeout=aiohttp.ClientTimeout(total=30)) as r:
                    assert r.status == 200
                health.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)
            statuses = await attack
            peak = max(peak, rss_mb(proc.pid, "VmHWM"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(
        f"4 concurrent 1 GB gzip bombs: RSS {baseline:.0f} MB -> peak {peak:.0f} MB (+{peak - baseline:.0f} MB); "
        f"/health max {max(health) * 1000:.0f} ms, median {statistics.median(health) * 1000:.0f} ms"
    )
    assert statuses == [413] * 4
    assert peak - baseline <= RSS_RISE_BOUND_MB, (baseline, peak)
    assert max(health) < 1.0, health
