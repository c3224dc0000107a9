"""Password guessing on the pole's status page: failed logins are limited per client address and
globally (429 with Retry-After), and scrypt runs in a small thread pool, so a login flood leaves
the ingest API as fast as it was. A real daemon process; clients on several loopback addresses."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import aiohttp

from tests.helpers.pole import PoleProcess, standalone_pole

PASSWORD = "throttle-test-password"


def from_address(n: int) -> aiohttp.ClientSession:
    """A client whose connections come from 127.0.0.<n>: another address, as the pole sees it."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(f"127.0.0.{n}", 0)))


async def ingest_latencies(pole: PoleProcess, n: int, until: asyncio.Future[object] | None = None) -> list[float]:
    """Latencies of ingest requests sent every 20 ms (``n`` of them, or until ``until`` is done),
    each on its own: a request that the pole makes wait does not hold the next one back."""
    out: list[float] = []

    async def one(s: aiohttp.ClientSession, i: int) -> None:
        started = time.perf_counter()
        async with s.post(pole.url + "/v1/events", json={"type": "reading", "data": {"i": i}}) as r:
            assert r.status == 201
        out.append(time.perf_counter() - started)

    async with aiohttp.ClientSession(headers=pole.headers) as s:
        probes = []
        while len(probes) < n if until is None else not until.done():
            probes.append(asyncio.create_task(one(s, len(probes))))
            await asyncio.sleep(0.02)
        await asyncio.gather(*probes)
    return out


async def wrong_login(n: int, pole: PoleProcess) -> tuple[int, str | None]:
    async with (
        from_address(n) as s,
        s.post(pole.url + "/login", data={"password": f"guess-{n}"}, allow_redirects=False) as r,
    ):
        return r.status, r.headers.get("Retry-After")


async def test_a_login_flood_neither_stalls_ingest_nor_gets_through(tmp_path: Path) -> None:
    async with standalone_pole(tmp_path, PASSWORD) as pole:
        await ingest_latencies(pole, 10)  # warm up
        before = statistics.median(await ingest_latencies(pole, 40))

        flood = asyncio.gather(*(wrong_login(n, pole) for n in range(2, 52)))  # 50 addresses at once
        during = await ingest_latencies(pole, 0, until=flood)
        answers = await flood
        p50 = statistics.median(during)
        print(f"ingest p50 before {before * 1000:.1f} ms, during a flood of 50 logins {p50 * 1000:.1f} ms")
        assert p50 < before + 0.025, (before, p50)

        checked = [a for a in answers if a[0] == 302]
        refused = [a for a in answers if a[0] == 429]
        assert len(checked) + len(refused) == 50, answers
        assert len(checked) <= 30, "at most 30 failed logins a minute, from all addresses together"
        assert refused and all(r is not None and int(r) >= 1 for _, r in refused)

        # The right password from yet another address is refused too while the global limit holds...
        async with (
            from_address(60) as s,
            s.post(pole.url + "/login", data={"password": PASSWORD}, allow_redirects=False) as r,
        ):
            assert r.status == 429


async def test_one_address_guessing_in_parallel_is_slowed_then_locked_out(tmp_path: Path) -> None:
    async with standalone_pole(tmp_path, PASSWORD, login_free_failures=1) as pole:
        started = time.monotonic()
        answers = await asyncio.gather(*(wrong_login(7, pole) for _ in range(20)))
        assert sum(1 for status, _ in answers if status == 302) == 1, "one guess at a time per address"
        assert all(status == 429 and retry for status, retry in answers if status != 302)
        for _ in range(1):  # one more failure: beyond login_free_failures, the back-off starts
            status, retry = await wrong_login(7, pole)
            if status == 429:
                await asyncio.sleep(int(retry or "1"))
                status, retry = await wrong_login(7, pole)
            assert status == 302
        status, retry = await wrong_login(7, pole)
        assert status == 429 and retry is not None and int(retry) >= 1, "locked out, with an exponential back-off"
        assert time.monotonic() - started < 30
        # Another address is not locked out by this one, and the right password works there.
        async with (
            from_address(8) as s,
            s.post(pole.url + "/login", data={"password": PASSWORD}, allow_redirects=False) as r,
        ):
            assert r.status == 302 and r.headers["Location"] == "/"
