"""The MQTT consumer: batches and media that poles publish through a broker.

Every receiver subscribes to ``$share/{group}/smartpole/v1/+/batches`` (and the
media topic) with QoS 1 on a persistent session, so the receivers of a group
split the poles' messages between them, and messages wait in the broker while
all of them are down. A message is acknowledged to the broker (PUBACK, sent by
hand, in the order messages arrived) only after it was stored and the reply was
published: a receiver killed half-way has its unacknowledged messages delivered
again, and the pole sends again whatever got no reply, so nothing is lost; the
unique key (pole id, event id) makes the repeats duplicates.

The broker's ACL decides who may publish under which pole id; the receiver
checks again that the topic's pole is registered and not revoked and that the
batch inside names the same pole, so a misconfigured broker cannot let one pole
write as another.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Any

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from tenacity import AsyncRetrying, RetryCallState, wait_random_exponential

from httpkit.body import BadEncoding, BodyTooLarge
from receiver.config import MqttSection
from receiver.context import Context
from receiver.ingest import ingest_batch, refused
from receiver.media import Media
from receiver.store.base import StoreError
from sync.cancellation import cancellable, enter
from sync.protocol import (
    MAC_PROPERTY,
    MQTT_ROOT,
    ProtocolError,
    broker_address,
    mac_matches,
    media_type,
    message_mac,
    mqtt_reply,
    parse_pole_topic,
    replies_topic,
)

log = structlog.get_logger("receiver.mqtt")

_KEYS_TTL_S = 10.0  # how long a pole's token hashes are kept in memory; a revocation bites within it
_GZIP = b"\x1f\x8b"


def default_client_id(worker: int | None = None) -> str:
    base = f"smartpole-receiver-{socket.gethostname()}"[:56]
    return base if worker is None else f"{base}-{worker}"


class MqttConsumer:
    """Consumes the poles' topics until cancelled, reconnecting with backoff."""

    def __init__(self, ctx: Context, media: Media, config: MqttSection, worker: int | None = None) -> None:
        self.ctx = ctx
        self.media = media
        self.config = config
        if config.client_id is None:
            self.client_id = default_client_id(worker)
        else:  # each worker process keeps its own persistent session
            self.client_id = config.client_id if worker is None else f"{config.client_id}-{worker}"
        self.host, self.port, self.tls = broker_address(config.url)
        warning = config.insecure_warning()
        if warning is not None:
            log.warning("mqtt_insecure", url=config.url, problem=warning)
        self._keys: dict[str, tuple[float, list[str]]] = {}  # pole id -> (when read, its token hashes)
        self._slots = asyncio.Semaphore(config.max_in_flight)
        ctx.metrics.mqtt_in_flight_max.set(config.max_in_flight)
        ctx.metrics.mqtt_connected.set(0)
        self._client: aiomqtt.Client | None = None
        self._acks: asyncio.Queue[tuple[aiomqtt.Message, asyncio.Task[None]]] = asyncio.Queue()
        self.connected = False

    def _topics(self) -> list[str]:
        group = f"$share/{self.config.group}/{MQTT_ROOT}/+"
        return [f"{group}/batches", f"{group}/media/+"]

    async def drain(self) -> None:
        """Take no more messages and finish those in hand (stored, answered, acknowledged); the
        caller then cancels :meth:`run`. A message that arrives meanwhile and is cut short is not
        acknowledged, so the broker delivers it again."""
        if self._client is not None and self.connected:
            try:
                await self._client.unsubscribe(self._topics())
            except aiomqtt.MqttError as exc:
                log.warning("mqtt_unsubscribe_failed", error=str(exc))
        await self._acks.join()

    async def run(self) -> None:
        # Whatever ends a session (the broker gone, a refused login, a bug) ends only that session.
        retrying = AsyncRetrying(wait=wait_random_exponential(multiplier=0.5, max=30), before_sleep=self._on_retry)
        async for attempt in retrying:
            with attempt:
                await self._session()

    def _on_retry(self, retry_state: RetryCallState) -> None:
        self.connected = False
        self.ctx.metrics.mqtt_connected.set(0)
        error = retry_state.outcome.exception() if retry_state.outcome else None
        delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
        log.warning(
            "mqtt_consumer_retry", broker=f"{self.host}:{self.port}", error=str(error), retry_in_s=round(delay, 2)
        )

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.config.ca_file) if self.config.ca_file else None)
        if self.config.cert_file is not None:
            key = str(self.config.key_file) if self.config.key_file else None
            context.load_cert_chain(str(self.config.cert_file), key)
        return context

    async def _session(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.config.session_expiry_s
        properties.ReceiveMaximum = self.config.max_in_flight
        password = self.config.password.get_secret_value() if self.config.password else None
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.config.username,
            password=password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=properties,
            keepalive=self.config.keepalive_s,
            tls_context=await asyncio.to_thread(self._tls_context),
        )
        # paho acknowledges a QoS 1 message as soon as it is handed over; we acknowledge it only
        # once it is stored and answered. aiomqtt does not expose the switch, paho's client does.
        client._client.manual_ack_set(True)  # noqa: SLF001
        self._acks = asyncio.Queue()  # what a lost session held is never acknowledged: a fresh queue
        acks = self._acks
        await enter(client)
        try:
            await cancellable(client.subscribe([(topic, SubscribeOptions(qos=1)) for topic in self._topics()]))
            self._client = client
            self.connected = True
            self.ctx.metrics.mqtt_connected.set(1)
            log.info("mqtt_consumer_connected", broker=f"{self.host}:{self.port}", client_id=self.client_id)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._acknowledge(client, acks))
                async for message in client.messages:
                    await self._slots.acquire()
                    self.ctx.metrics.mqtt_in_flight.inc()
                    acks.put_nowait((message, tg.create_task(self._handle(client, message))))
        finally:
            await client.__aexit__(None, None, None)

    async def _acknowledge(
        self, client: aiomqtt.Client, acks: asyncio.Queue[tuple[aiomqtt.Message, asyncio.Task[None]]]
    ) -> None:
        """PUBACK each message once handled, in the order they arrived (as MQTT requires)."""
        while True:
            message, task = await acks.get()
            try:
                await asyncio.wait([task])
                if not task.cancelled() and task.exception() is None:
                    client._client.ack(message.mid, message.qos)  # noqa: SLF001
            finally:
                acks.task_done()

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        try:
            await self._answer(client, message)
        except aiomqtt.MqttError:
            raise  # the connection is gone: the session ends and the message comes again
        except Exception:
            # Acknowledged anyway: the pole sends again what got no reply, and one message must not
            # stop the consumer.
            self.ctx.metrics.mqtt_messages.labels("unknown", "error").inc()
            log.exception("mqtt_message_failed", topic=str(message.topic)[:200])
        finally:
            self._slots.release()
            self.ctx.metrics.mqtt_in_flight.dec()

    async def _answer(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        metrics = self.ctx.metrics
        try:
            where = parse_pole_topic(str(message.topic))
        except ProtocolError as exc:
            metrics.mqtt_messages.labels("unknown", "bad_topic").inc()
            log.warning("mqtt_bad_topic", topic=str(message.topic)[:200], error=str(exc))
            return
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        correlation = bytes(getattr(message.properties, "CorrelationData", b"") or b"")
        sent_mac = dict(getattr(message.properties, "UserProperty", None) or []).get(MAC_PROPERTY)
        key: str | None = None
        try:
            keys = await self._pole_keys(where.pole_id)
            key = next((k for k in keys if mac_matches([k], correlation, payload, sent_mac)), None)
            if key is None:
                status, body = 401, {"error": "message not signed by a current token of this pole (or not registered)"}
            else:
                status, body = await self._outcome(where.pole_id, where.kind, where.sha256, payload)
        except StoreError as exc:
            log.error("store_unavailable", error=str(exc), pole_id=where.pole_id)
            status, body = 503, {"error": "database unavailable, retry later"}
        metrics.mqtt_messages.labels(where.kind, str(status)).inc()
        log.debug("mqtt_message", pole_id=where.pole_id, kind=where.kind, status=status, mid=message.mid)
        reply = mqtt_reply(status, body)
        properties = Properties(PacketTypes.PUBLISH)
        properties.CorrelationData = correlation
        if key is not None:
            properties.UserProperty = (MAC_PROPERTY, message_mac(key, correlation, reply))
        # The reply goes to the pole's own replies topic whatever response topic the message named.
        await cancellable(client.publish(replies_topic(where.pole_id), reply, qos=1, properties=properties))

    async def _outcome(self, pole_id: str, kind: str, sha256: str | None, payload: bytes) -> tuple[int, dict[str, Any]]:
        if kind == "media":
            assert sha256 is not None
            receiver = self.ctx.config
            kind = media_type(payload)
            limit = receiver.max_clip_bytes if kind == "video/mp4" else receiver.max_media_bytes
            if len(payload) > min(limit, self.config.max_message_bytes):
                return 413, {"error": f"{kind} larger than {min(limit, self.config.max_message_bytes)} bytes"}
            return await self.media.accept(pole_id, sha256, payload)
        limit = self.config.max_message_bytes
        try:
            # Gzip is the uplink's own encoding, told by its magic bytes; a plain document is taken too.
            document = await self.ctx.gunzip(payload, limit) if payload.startswith(_GZIP) else payload
            if len(document) > limit:
                raise BodyTooLarge(limit)
        except BodyTooLarge as exc:
            outcome = refused(413, f"batch {exc}")
        except BadEncoding as exc:
            outcome = refused(400, f"body cannot be decoded (gzip): {exc}")
        else:
            outcome = await ingest_batch(self.ctx, pole_id, bytes(document), credential="topic")
        return outcome.status, outcome.body.model_dump()

    async def _pole_keys(self, pole_id: str) -> list[str]:
        now = time.monotonic()
        cached = self._keys.get(pole_id)
        if cached is not None and now - cached[0] < _KEYS_TTL_S:
            return cached[1]
        keys = await self.ctx.store.pole_keys(pole_id)
        if keys:
            self._keys[pole_id] = (now, keys)
        else:
            self._keys.pop(pole_id, None)
        return keys
