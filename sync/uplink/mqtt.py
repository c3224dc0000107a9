"""Wire protocol v1 over MQTT v5 through a broker (aiomqtt).

The pole connects with its id as client id and user name, on a persistent
session (clean start off, a session expiry), and subscribes to its replies
topic with QoS 1, so a reply published while it was offline reaches it when it
comes back. Each batch is published with QoS 1, its batch id as correlation
data and the replies topic as response topic; the call returns when the
receiver's reply with that correlation data arrives, and raises
:class:`TransportError` when none came within the timeout: the broker's PUBACK
only says the broker has the message, not that any receiver stored it.
Replies to batches given up on are ignored; their events were sent again and
the receiver turns the repeats into duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from types import TracebackType
from typing import Self

import aiomqtt
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sync.cancellation import cancellable, enter
from sync.protocol import (
    MAC_PROPERTY,
    batches_topic,
    broker_address,
    mac_matches,
    media_correlation,
    media_topic,
    message_mac,
    read_mqtt_reply,
    replies_topic,
    token_hash,
)
from sync.uplink.base import UplinkConfig
from sync.uplink.http import HttpTransport
from sync.uplink.transport import Answer, CredentialsRefused, TransportError

log = structlog.get_logger("uplink")

# CONNACK reason codes that mean our credentials, not the network, are the problem.
_REFUSED = {134, 135, 0x04, 0x05}  # v5: bad user name or password, not authorized; v3: the same two


class MqttTransport:
    """Batches and media to the receivers through a broker; replies matched by correlation data."""

    def __init__(self, config: UplinkConfig, pole_id: str) -> None:
        self.config = config
        self.pole_id = pole_id
        self.host, self.port, self.tls = broker_address(config.url)
        secret = config.password or config.token
        self._password = secret.get_secret_value() if secret is not None else None
        # Messages are signed with the token's hash, which is what the receiver holds of it.
        self._key = token_hash(config.token.get_secret_value()) if config.token is not None else None
        self._replies_topic = replies_topic(pole_id)
        self._waiting: dict[bytes, asyncio.Future[Answer]] = {}
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        media = config.mqtt
        self._media_http = (
            HttpTransport(media.media_url, config.token.get_secret_value() if config.token else None, config.timeout_s)
            if media.media == "http" and media.media_url
            else None
        )

    async def __aenter__(self) -> Self:
        if self._media_http is not None:
            await self._media_http.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._disconnect(TransportError("uplink stopped"))
        if self._media_http is not None:
            await self._media_http.__aexit__(exc_type, exc, tb)

    # ------------------------------------------------------------------ connection

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        mqtt = self.config.mqtt
        context = ssl.create_default_context(cafile=str(mqtt.ca_file) if mqtt.ca_file else None)
        if mqtt.cert_file is not None:
            context.load_cert_chain(str(mqtt.cert_file), str(mqtt.key_file) if mqtt.key_file else None)
        return context

    async def _connection(self) -> aiomqtt.Client:
        async with self._connect_lock:
            if self._client is not None:
                return self._client
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.config.mqtt.session_expiry_s
            client = aiomqtt.Client(
                self.host,
                self.port,
                username=self.pole_id,
                password=self._password,
                identifier=self.pole_id,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,
                properties=properties,
                keepalive=self.config.mqtt.keepalive_s,
                tls_context=await asyncio.to_thread(self._tls_context),
                timeout=self.config.timeout_s,
            )
            try:
                await enter(client)
            except aiomqtt.MqttCodeError as exc:
                code = getattr(exc.rc, "value", exc.rc)
                if isinstance(exc, MqttConnectError) and code in _REFUSED:
                    raise CredentialsRefused(f"broker refused pole {self.pole_id!r}: {exc}") from exc
                raise TransportError(f"broker {self.host}:{self.port}: {exc}") from exc
            except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
                raise TransportError(f"broker {self.host}:{self.port}: {exc}") from exc
            try:
                await cancellable(client.subscribe(self._replies_topic, qos=1))
            except aiomqtt.MqttError as exc:
                with contextlib.suppress(Exception):
                    await client.__aexit__(None, None, None)
                raise TransportError(f"cannot subscribe to {self._replies_topic}: {exc}") from exc
            self._client = client
            self._reader = asyncio.create_task(self._read_replies(client), name="uplink-mqtt-replies")
            log.info("uplink_mqtt_connected", broker=f"{self.host}:{self.port}", tls=self.tls)
            return client

    async def _read_replies(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                properties = message.properties
                correlation = bytes(getattr(properties, "CorrelationData", b"") or b"")
                payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                mac = dict(getattr(properties, "UserProperty", None) or []).get(MAC_PROPERTY)
                if self._key is not None and mac_matches([self._key], correlation, payload, mac):
                    waiter = self._waiting.pop(correlation, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(Answer(*read_mqtt_reply(payload)))
                elif correlation in self._waiting:
                    # Only a receiver holding our token's hash can sign; anything else must not settle a batch.
                    log.warning("uplink_mqtt_unsigned_reply", topic=str(message.topic))
        except aiomqtt.MqttError as exc:
            log.warning("uplink_mqtt_disconnected", error=str(exc))
            if self._client is client:
                await self._disconnect(TransportError(f"connection to the broker lost: {exc}"), reader_exits=True)

    async def _disconnect(self, reason: TransportError, reader_exits: bool = False) -> None:
        client, self._client = self._client, None
        reader, self._reader = self._reader, None
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(reason)
        self._waiting.clear()
        if reader is not None and not reader_exits:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)

    # ------------------------------------------------------------------ requests

    async def send_batch(self, batch_id: str, body: bytes) -> Answer:
        return await self._request(batches_topic(self.pole_id), batch_id.encode(), body)

    async def send_media(self, sha256: str, data: bytes) -> Answer:
        if self._media_http is not None:
            return await self._media_http.send_media(sha256, data)
        return await self._request(media_topic(self.pole_id, sha256), media_correlation(sha256), data)

    async def _request(self, topic: str, correlation: bytes, payload: bytes) -> Answer:
        client = await self._connection()
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = self._replies_topic
        properties.CorrelationData = correlation
        if self._key is not None:
            properties.UserProperty = (MAC_PROPERTY, message_mac(self._key, correlation, payload))
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        previous = self._waiting.get(correlation)
        if previous is not None and not previous.done():
            previous.set_exception(TransportError("superseded by a new attempt"))
        self._waiting[correlation] = answer
        try:
            await cancellable(
                client.publish(topic, payload, qos=1, properties=properties, timeout=self.config.timeout_s)
            )
            async with asyncio.timeout(self.config.timeout_s):
                return await answer
        except TimeoutError:
            raise TransportError(f"no reply from a receiver within {self.config.timeout_s:g} s") from None
        except aiomqtt.MqttError as exc:
            if self._client is client:
                await self._disconnect(TransportError(str(exc)))
            raise TransportError(f"publish to {topic}: {exc}") from exc
        finally:
            if self._waiting.get(correlation) is answer:
                del self._waiting[correlation]
