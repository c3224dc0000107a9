"""A receiver, its MQTT consumers and a Mosquitto broker of the test's own, wired together."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from receiver.config import MqttSection
from receiver.mqtt import MqttConsumer
from sync.outbox import Outbox
from sync.uplink.base import UplinkConfig
from sync.uplink.factory import build_uplink
from sync.uplink.sender import BatchUplink
from tests.conftest import RunningReceiver, service_missing, start_receiver, stop_receiver
from tests.helpers.broker import Broker

RECEIVER_PASSWORD = "receiver-broker-password-0123456789"


class Rig:
    def __init__(self, rx: RunningReceiver, broker: Broker) -> None:
        self.rx = rx
        self.broker = broker
        self.consumers: dict[str, tuple[MqttConsumer, asyncio.Task[None]]] = {}

    def consumer_config(self, client_id: str, **overrides: Any) -> MqttSection:
        settings: dict[str, Any] = {
            "enabled": True,
            "url": self.broker.url,
            "username": "receiver",
            "password": SecretStr(RECEIVER_PASSWORD),
            "client_id": client_id,
            "session_expiry_s": 600,
            "max_in_flight": 16,
        }
        settings.update(overrides)
        return MqttSection(**settings)

    def start_consumer(self, client_id: str = "rx-a", **overrides: Any) -> MqttConsumer:
        consumer = MqttConsumer(
            self.rx.receiver.ctx, self.rx.receiver.media, self.consumer_config(client_id, **overrides)
        )
        self.consumers[client_id] = (consumer, asyncio.create_task(consumer.run(), name=f"consumer-{client_id}"))
        return consumer

    async def stop_consumer(self, client_id: str = "rx-a") -> None:
        _, task = self.consumers.pop(client_id)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def connected(self, client_id: str = "rx-a", timeout: float = 10) -> None:
        consumer, _ = self.consumers[client_id]
        await eventually(lambda: consumer.connected, timeout, f"consumer {client_id} connected")

    def uplink(self, outbox: Outbox, pole_id: str = "pole-1", **overrides: Any) -> BatchUplink:
        settings: dict[str, Any] = {
            "kind": "mqtt",
            "url": self.broker.url,
            "token": SecretStr(self.rx.tokens[pole_id]),
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.5,
            "bandwidth_bytes_per_s": 0,
            "linger_s": 0,
            "timeout_s": 2,
            "heartbeat_s": 30,
        }
        settings.update(overrides)

        async def status() -> dict[str, Any]:
            return {"backlog": (await outbox.stats()).depth}

        uplink = build_uplink(outbox, UplinkConfig(**settings), pole_id, status)
        assert isinstance(uplink, BatchUplink)
        return uplink


async def eventually(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def rig(
    database_url: str, tmp_path: Path, poles: tuple[str, ...] = ("pole-1",), acl: bool = True
) -> AsyncIterator[Rig]:
    if shutil.which("mosquitto") is None:
        service_missing("mosquitto (Debian package mosquitto)", FileNotFoundError("mosquitto"))
    rx = await start_receiver(database_url, tmp_path / "media")
    for pole in poles:
        await rx.add_pole(pole)
    users = {pole: rx.tokens[pole] for pole in poles} | {"receiver": RECEIVER_PASSWORD}
    broker = Broker(tmp_path / "broker", users, acl=acl).start()
    running = Rig(rx, broker)
    try:
        yield running
    finally:
        for client_id in list(running.consumers):
            await running.stop_consumer(client_id)
        broker.stop()
        await stop_receiver(rx)


async def drain(uplink: BatchUplink, outbox: Outbox, timeout: float = 60) -> None:
    """Run ``uplink`` until the outbox is empty."""
    task = asyncio.create_task(uplink.run())
    try:
        await eventually(lambda: outbox.backlog == 0 or task.done(), timeout, f"drained; uplink {uplink.state}")
        assert not task.done(), task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
