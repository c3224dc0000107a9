"""Running the receiver, and the administration commands behind ``smartpole receiver``."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import structlog
from aiohttp import web

from httpkit.passwords import hash_password
from receiver.app import Receiver
from receiver.auth import new_token, token_hash
from receiver.config import ReceiverConfig
from receiver.maintenance import MaintenanceSummary, maintenance_loop, run_maintenance
from receiver.mediastore.factory import open_media_store
from receiver.mqtt import MqttConsumer
from receiver.store.base import TOKEN_ID_LENGTH, PoleChanges, StoreError, TokenRecord
from receiver.store.factory import open_store

log = structlog.get_logger("receiver")

# Connections the kernel queues before they are accepted (capped by net.core.somaxconn). aiohttp's
# 128 overflows when a thousand poles reconnect at once after an outage: the dropped SYNs are
# retried after 1, 3, 7 s..., seconds of latency while the receiver sits idle.
LISTEN_BACKLOG = 4096


async def serve(
    config: ReceiverConfig,
    stop: asyncio.Event,
    on_listening: Callable[[int], None] | None = None,
    worker: int | None = None,
) -> None:
    """Serve until ``stop`` is set, then drain: take no new requests or MQTT messages, finish those
    in hand, all within ``shutdown_timeout_s``. ``on_listening`` gets the bound port (useful with
    port 0). ``worker`` numbers one of several processes sharing the port (``--workers``)."""
    section = config.receiver
    # Not waiting for PostgreSQL: a receiver started while it is away is alive and not ready, and
    # becomes ready when it answers (readiness probes tell the load balancer).
    store = await open_store(section.database_url.get_secret_value(), section.pool_size, wait=False)
    media = open_media_store(config.media, section.media_dir)
    try:
        receiver = Receiver(section, config.policy, store, media=media, dashboard=config.dashboard)
        runner = web.AppRunner(receiver.make_app(), access_log=None, shutdown_timeout=section.shutdown_timeout_s)
        await runner.setup()
        site = web.TCPSite(runner, section.bind, section.port, reuse_port=worker is not None, backlog=LISTEN_BACKLOG)
        await site.start()
        port = runner.addresses[0][1]
        log.info(
            "receiver_listening", bind=section.bind, port=port, backend=store.backend, media=media.name, worker=worker
        )
        try:
            problem = await store.schema_behind()
        except StoreError as exc:
            problem = f"database unreachable: {exc}"
        if problem is not None:
            log.warning("receiver_not_ready", problem=problem)
        consumer = MqttConsumer(receiver.ctx, receiver.media, config.mqtt, worker) if config.mqtt.enabled else None
        consuming = asyncio.create_task(consumer.run(), name="mqtt-consumer") if consumer is not None else None
        upkeep = asyncio.create_task(
            maintenance_loop(store, media, config.retention, receiver.ctx.metrics), name="maintenance"
        )
        if on_listening is not None:
            on_listening(port)
        try:
            await stop.wait()
        finally:
            log.info("receiver_draining", timeout_s=section.shutdown_timeout_s)
            upkeep.cancel()
            await asyncio.gather(
                runner.cleanup(),  # closes the socket, then waits for the requests in flight (bounded)
                _stop_consumer(consumer, consuming, section.shutdown_timeout_s),
            )
            await asyncio.gather(upkeep, return_exceptions=True)
            await receiver.ctx.token_use.settled()
    finally:
        await media.close()
        await store.close()
        log.info("receiver_stopped")


async def _stop_consumer(consumer: MqttConsumer | None, task: asyncio.Task[None] | None, timeout_s: float) -> None:
    if consumer is None or task is None:
        return
    try:
        async with asyncio.timeout(timeout_s):  # not wait_for: see sync/cancellation.py
            await consumer.drain()
    except TimeoutError:
        log.warning("mqtt_drain_timeout", timeout_s=timeout_s)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def add_pole(
    config: ReceiverConfig,
    pole_id: str,
    name: str | None = None,
    location: tuple[float, float] | None = None,
    tags: list[str] | None = None,
) -> str:
    """Register a pole (or give it one more token) and return the new token, to be shown once;
    ``name``, ``location`` (lat, lon) and ``tags``, when given, replace what the registry had."""
    token = await _add_token(config, "pole", pole_id, None)
    fields: dict[str, object] = {} if name is None else {"name": name}
    if location is not None:
        fields |= {"lat": location[0], "lon": location[1]}
    if fields or tags is not None:
        store = await open_store(config.receiver.database_url.get_secret_value(), 1)
        try:
            await store.update_pole(pole_id, PoleChanges(fields, tags))
        finally:
            await store.close()
    return token


async def add_reader(config: ReceiverConfig, name: str) -> str:
    """A token for dashboards and analytics: it reads events, media and pole state, and writes nothing."""
    return await _add_token(config, "reader", None, name)


async def add_admin(config: ReceiverConfig, name: str) -> str:
    """A token for operators: all a reader does, plus registering, revoking and configuring poles."""
    return await _add_token(config, "admin", None, name)


async def _add_token(config: ReceiverConfig, role: str, pole_id: str | None, name: str | None) -> str:
    store = await open_store(config.receiver.database_url.get_secret_value(), 1)
    try:
        token = new_token()
        await store.add_token(token_hash(token), role, pole_id, name)
        return token
    finally:
        await store.close()


async def add_user(config: ReceiverConfig, name: str, role: str, password: str) -> bool:
    """Create a dashboard user, or give an existing one this role and password (logging it out
    everywhere); True if created. The password is kept only as its scrypt hash."""
    password_hash = await asyncio.to_thread(hash_password, password)
    store = await open_store(config.receiver.database_url.get_secret_value(), 1)
    try:
        return await store.put_user(name, role, password_hash, time.time())
    finally:
        await store.close()


class TokenNotFound(LookupError):
    pass


class AmbiguousToken(LookupError):
    pass


async def list_tokens(config: ReceiverConfig) -> list[TokenRecord]:
    """Every token with its id, role, pole or name, creation, last use and revocation; never its secret."""
    store = await open_store(config.receiver.database_url.get_secret_value(), 1)
    try:
        return await store.list_tokens()
    finally:
        await store.close()


async def revoke_token(config: ReceiverConfig, id_or_prefix: str) -> str:
    """Revoke the one token whose id is or starts with ``id_or_prefix``; its full id.

    :class:`TokenNotFound` when none matches (or it was revoked already), :class:`AmbiguousToken`
    naming the candidates' ids when several do."""
    prefix = id_or_prefix.strip().lower()
    if not re.fullmatch(f"[0-9a-f]{{1,{TOKEN_ID_LENGTH}}}", prefix):
        raise TokenNotFound(f"no token has the id {id_or_prefix!r}: ids are {TOKEN_ID_LENGTH} hex digits")
    store = await open_store(config.receiver.database_url.get_secret_value(), 1)
    try:
        found = await store.tokens_with_prefix(prefix)
        if not found:
            raise TokenNotFound(f"no token has an id starting with {prefix!r}")
        if len(found) > 1:
            ids = ", ".join(t.token_id for t in found)
            raise AmbiguousToken(f"{len(found)} tokens have an id starting with {prefix!r}: {ids}")
        (token,) = found
        if not await store.revoke_token(token.token_id):
            raise TokenNotFound(f"token {token.token_id} was revoked already")
        return token.token_id
    finally:
        await store.close()


async def revoke_pole(config: ReceiverConfig, pole_id: str) -> int:
    """Revoke every token of a pole; returns how many were active."""
    store = await open_store(config.receiver.database_url.get_secret_value(), 1)
    try:
        return await store.revoke_pole(pole_id)
    finally:
        await store.close()


async def maintain(config: ReceiverConfig) -> MaintenanceSummary:
    """``smartpole receiver maintain``: partitions ahead, retention and media, once."""
    section = config.receiver
    store = await open_store(section.database_url.get_secret_value(), 1)
    media = open_media_store(config.media, section.media_dir)
    try:
        return await run_maintenance(store, media, config.retention)
    finally:
        await media.close()
        await store.close()
