"""The shared web security pieces in httpkit, on their own (the pole's status page uses them now,
the receiver's dashboard will)."""

from __future__ import annotations

import asyncio
import gzip
import time
from typing import Any

import pytest

from httpkit.body import BodyTooLarge, Gunzip
from httpkit.passwords import PasswordChecker, hash_password, verify_password
from httpkit.throttle import LoginThrottle, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def attempt(throttle: LoginThrottle, client: str, ok: bool = False) -> float | None:
    wait = throttle.begin(client)
    if wait is None:
        (throttle.succeeded if ok else throttle.failed)(client)
        throttle.end(client)
    return wait


def test_back_off_doubles_per_address_after_the_free_failures() -> None:
    clock = Clock()
    throttle = LoginThrottle(free_failures=3, base_delay_s=2, max_delay_s=20, clock=clock)
    assert [attempt(throttle, "a") for _ in range(3)] == [None, None, None]
    waits = []
    for _ in range(6):
        assert attempt(throttle, "a") is None
        waits.append(throttle.begin("a"))
        clock.now += waits[-1] or 0
    assert waits == [2, 4, 8, 16, 20, 20]
    assert throttle.begin("b") is None, "another address is not held back"
    throttle.end("b")
    assert attempt(throttle, "a", ok=True) is None
    assert attempt(throttle, "a") is None, "a success clears the record"


def test_one_attempt_at_a_time_per_address() -> None:
    throttle = LoginThrottle(clock=Clock())
    assert throttle.begin("a") is None
    assert throttle.begin("a") == 1.0
    throttle.failed("a")
    throttle.end("a")
    assert throttle.begin("a") is None


def test_global_budget_counts_attempts_in_flight_and_slides() -> None:
    clock = Clock()
    throttle = LoginThrottle(global_failures=5, window_s=60, clock=clock)
    for n in range(5):
        assert throttle.begin(f"10.0.0.{n}") is None
    assert throttle.begin("10.0.0.99") == 1.0, "five checks under way already"
    for n in range(5):
        throttle.failed(f"10.0.0.{n}")
        throttle.end(f"10.0.0.{n}")
    clock.now += 10
    assert throttle.begin("10.0.0.99") == 50
    clock.now += 50
    assert throttle.begin("10.0.0.99") is None


def test_records_are_bounded_and_forgotten() -> None:
    clock = Clock()
    throttle = LoginThrottle(
        free_failures=0, global_failures=10**6, max_addresses=100, forget_after_s=3600, clock=clock
    )
    for n in range(1000):
        attempt(throttle, f"client-{n}")
    assert len(throttle._records) == 100
    assert throttle.begin("client-999") is not None
    clock.now += 3601
    assert throttle.begin("client-999") is None


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert [retry_after(s) for s in (0.0, 0.2, 1.0, 1.01, 59.5)] == ["1", "1", "1", "2", "60"]


async def test_password_checks_run_off_the_loop_one_at_a_time() -> None:
    encoded = hash_password("right password")
    checker = PasswordChecker(max_concurrent=1)
    try:
        checks = asyncio.gather(*(checker.verify(f"guess {n}", encoded) for n in range(6)))
        ticks = 0
        started = time.perf_counter()
        while not checks.done():
            await asyncio.sleep(0.005)
            ticks += 1
        elapsed = time.perf_counter() - started
        assert await checks == [False] * 6
        assert ticks > elapsed / 0.005 / 3, "the loop kept turning while scrypt ran"
        assert await checker.verify("right password", encoded)
    finally:
        checker.close()
    assert not verify_password("x", "scrypt$1099511627776$8$1$AAAA$AAAA"), "absurd work factors are refused"


def test_gunzip_limited_stops_at_its_limit_and_refuses_what_is_not_one_gzip_stream() -> None:
    import gzip

    import pytest

    from httpkit.body import BadEncoding, BodyTooLarge, gunzip_limited
    from tests.test_body_limits import gzip_bomb

    doc = b'{"a": 1}' * 10_000
    assert gunzip_limited(gzip.compress(doc), len(doc)) == doc
    with pytest.raises(BodyTooLarge):
        gunzip_limited(gzip.compress(doc), len(doc) - 1)
    with pytest.raises(BodyTooLarge):
        gunzip_limited(gzip_bomb(1024), 10 * 1024 * 1024)  # stops after about 10 MB of a 1 GB stream
    with pytest.raises(BadEncoding):
        gunzip_limited(gzip.compress(doc)[:-20], 10**9)
    with pytest.raises(BadEncoding):
        gunzip_limited(gzip.compress(doc) + b"trailing", 10**9)
    with pytest.raises(BadEncoding):
        gunzip_limited(b"not gzip at all", 10**9)


async def test_csrf_guard_wants_the_origin_and_the_session_token() -> None:
    from aiohttp.test_utils import make_mocked_request

    from httpkit.csrf import CsrfGuard, cross_origin

    def request(method: str = "POST", **headers: str):  # type: ignore[no-untyped-def]
        return make_mocked_request(method, "/action", headers={"Host": "pole.local:8470", **headers})

    assert cross_origin(request(Origin="http://pole.local:8470", **{"Sec-Fetch-Site": "same-origin"})) is None
    assert cross_origin(request()) is None, "no browser headers: nothing to tell"
    assert cross_origin(request(Origin="http://pole.local:9999"))
    assert cross_origin(request(Origin="null"))
    assert cross_origin(request(**{"Sec-Fetch-Site": "same-site"}))
    guard = CsrfGuard(key=b"k" * 32)
    assert guard.token("session-a") != guard.token("session-b")
    assert await guard.refusal(request("GET", Origin="http://evil"), "session-a") is None, "reads are not checked"
    assert await guard.refusal(request(), None) is None, "before login: the origin check only"
    assert await guard.refusal(request(), "session-a") == "missing CSRF token: reload the page"
    assert await guard.refusal(request(**{"X-CSRF-Token": guard.token("session-b")}), "session-a")
    assert await guard.refusal(request(**{"X-CSRF-Token": guard.token("session-a")}), "session-a") is None


async def test_gunzip_inflates_small_bodies_at_once_and_small_bombs_still_in_a_thread_within_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[str] = []
    real = asyncio.to_thread

    async def spy(func: Any, *args: Any) -> Any:
        threads.append(func.__name__)
        return await real(func, *args)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    gunzip = Gunzip()
    batch = gzip.compress(b'{"events": []}' * 100)
    assert await gunzip(batch, 10_000_000) == b'{"events": []}' * 100
    assert threads == [], "a small batch is inflated without a thread"
    bomb = gzip.compress(bytes(8_000_000))  # about 8 KB that inflates to 8 MB
    assert len(bomb) <= Gunzip.INLINE_INPUT
    assert len(await gunzip(bomb, 10_000_000)) == 8_000_000
    assert threads == ["gunzip_limited"], "past 1 MiB it goes to a thread"
    with pytest.raises(BodyTooLarge):
        await gunzip(bomb, 2_000_000)
    with pytest.raises(BodyTooLarge):
        await gunzip(bomb, 500_000)  # a limit under 1 MiB is enforced at once
