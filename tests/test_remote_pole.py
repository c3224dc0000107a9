"""A real pole daemon process against a real receiver: the event policy on both sides, and remote
configuration's round trip (push, fetch, apply, report; a bad overlay; one the pole cannot apply;
a reboot)."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from receiver.auth import new_token, token_hash
from receiver.policy import PolicyConfig
from tests.conftest import RunningReceiver, start_receiver, stop_receiver
from tests.helpers.pole import PoleProcess
from tests.test_fleet import call

Check = Callable[[], Awaitable[Any]]


async def until(check: Check, pole: PoleProcess, what: str, timeout: float = 30.0) -> Any:
    """The first truthy value of ``check``, polled without blocking the receiver in this loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s; pole log tail:\n{pole.log.read_text()[-3000:]}")
        await asyncio.sleep(0.1)


async def ingest(pole: PoleProcess, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Post to the pole's local ingest API, riding out an in-process restart of its server."""
    deadline = time.monotonic() + 20
    while True:
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.post(pole.url + "/v1/events", json=events, headers=pole.headers) as r,
            ):
                assert r.status == 201, await r.text()
                body: dict[str, Any] = await r.json()
                return body
        except aiohttp.ClientConnectionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.fixture
async def rx(tmp_path: Path) -> AsyncIterator[RunningReceiver]:
    running = await start_receiver(
        f"sqlite:///{tmp_path / 'receiver.db'}", tmp_path / "media", policy=PolicyConfig(denied_types=["forbidden"])
    )
    yield running
    await stop_receiver(running)


async def register(rx: RunningReceiver) -> tuple[str, str]:
    """(admin token, the token of pole-1 registered through the API)."""
    admin = new_token()
    await rx.store.add_token(token_hash(admin), "admin", None, "ops")
    status, reply = await call(rx, "POST", "/v1/poles", admin, {"pole_id": "pole-1", "tags": ["north"]})
    assert status == 201, reply
    return admin, reply["token"]


async def test_policy_applies_on_the_pole_and_again_at_the_receiver(rx: RunningReceiver, tmp_path: Path) -> None:
    admin, token = await register(rx)
    (tmp_path / "pole").mkdir()
    pole = PoleProcess(tmp_path / "pole", rx.url, token, uplink={"heartbeat_s": 1.0})
    await asyncio.to_thread(pole.start)
    try:
        answer = await ingest(
            pole,
            [
                {"type": "plate_read", "data": {"plate_text": "EBY584", "vehicle": {"plate_text": "X1"}, "lane": 1}},
                {"type": "forbidden", "data": {"n": 1}},
            ],
        )
        assert all(answer["ids"]) and "withheld" not in answer, "the pole's default policy lets both through"

        async def arrived() -> list[dict[str, Any]]:
            return [e for e in await rx.all_events() if e["type"] == "plate_read"]

        (plate,) = await until(arrived, pole, "the plate_read event at the receiver")
        assert plate["data"] == {"vehicle": {}, "lane": 1}, "plate text never left the pole"

        async def dead_lettered() -> bool:
            status, view = await call(rx, "GET", "/v1/poles/pole-1", admin)
            return bool((view.get("status") or {}).get("dead_letters"))

        await until(dead_lettered, pole, "the pole reporting the receiver's rejection as a dead letter")
        assert [e["type"] for e in await rx.all_events()] == ["plate_read"], "the receiver's deny rule refused it"
    finally:
        await asyncio.to_thread(pole.stop)


async def test_remote_configuration_round_trip(rx: RunningReceiver, tmp_path: Path) -> None:
    admin, token = await register(rx)
    (tmp_path / "pole").mkdir()
    pole = PoleProcess(tmp_path / "pole", rx.url, token, uplink={"heartbeat_s": 1.0})
    await asyncio.to_thread(pole.start)
    try:

        async def pole_view() -> dict[str, Any]:
            status, view = await call(rx, "GET", "/v1/poles/pole-1", admin)
            assert status == 200
            return view

        async def config_reported(applied: str, error: str | None = None) -> Check:
            async def check() -> bool:
                config = (await pole_view())["config"]
                return config["applied_version"] == applied and (error is None or error in (config["error"] or ""))

            return check

        await until(await config_reported("0"), pole, "the pole reporting no remote configuration")

        # An admin pushes an overlay to the pole's tag; the pole fetches, applies and reports it.
        overlay = {
            "uplink": {"max_batch_events": 2},
            "policy": {"denied_types": ["noise"], "redact": [{"path": "data.**.plate_text"}, {"path": "data.note"}]},
        }
        status, reply = await call(rx, "PUT", "/v1/tags/north/config", admin, overlay)
        assert status == 200, reply
        target = reply["poles"]["pole-1"]
        await until(await config_reported(target), pole, "the pole applying the overlay")
        view = await pole_view()
        assert view["config"] == {"target_version": target, "applied_version": target, "in_sync": True, "error": None}
        state = tmp_path / "pole" / "state" / "remote-config.json"
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o600

        answer = await ingest(pole, [{"type": "noise", "data": {}}, {"type": "reading", "data": {"note": "x", "v": 1}}])
        assert answer["ids"][0] is None and "denied by this pole's policy" in answer["withheld"][0]["reason"]

        async def reading() -> list[dict[str, Any]]:
            return [e for e in await rx.all_events() if e["type"] == "reading"]

        (event,) = await until(reading, pole, "the reading at the receiver")
        assert event["data"] == {"v": 1}
        assert not [e for e in await rx.all_events() if e["type"] == "noise"]

        # A bad overlay never reaches the pole: a 400 naming the key.
        status, reply = await call(rx, "PUT", "/v1/poles/pole-1/config", admin, {"vision": {"detection": {"x": 1}}})
        assert status == 400 and "vision.detection.x: unknown key" in reply["error"]

        # Valid at the receiver, not on this pole (it has no camera 'cam9'): it keeps running what it ran.
        status, reply = await call(rx, "PUT", "/v1/poles/pole-1/config", admin, {"cameras": {"cam9": {"fps": 5}}})
        assert status == 200
        failing = reply["target_version"]
        await until(await config_reported(target, "cameras.cam9"), pole, "the pole reporting the overlay's error")
        view = await pole_view()
        assert view["config"]["target_version"] == failing and view["config"]["in_sync"] is False
        assert f"remote config {failing} not applied" in view["config"]["error"]
        answer = await ingest(pole, [{"type": "noise", "data": {}}])
        assert answer["ids"] == [None], "the old configuration still runs"
        assert pole.proc is not None and pole.proc.poll() is None
    finally:
        await asyncio.to_thread(pole.stop)

    # Reboot with the receiver gone: the persisted overlay runs before anything reaches a receiver.
    await rx.runner.cleanup()
    await asyncio.to_thread(pole.start)
    try:
        answer = await ingest(pole, [{"type": "noise", "data": {}}])
        assert answer["ids"] == [None], "the policy of the persisted overlay is in force"
        ready = [r for r in pole.log_records() if r.get("event") == "ready"]
        assert ready[-1]["remote_config_version"] == target and ready[-1]["remote_config_error"] is None
    finally:
        await asyncio.to_thread(pole.stop)
