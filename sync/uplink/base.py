"""The seam between the outbox and the network: an ``Uplink`` drains the outbox upstream.

Implementations: :class:`sync.uplink.sender.BatchUplink` speaks wire protocol v1 to a
receiver over a transport (HTTP, or MQTT through a broker); :class:`sync.uplink.simulated.SimulatedUplink`
acknowledges everything locally, for developing on a bench with no receiver.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from sync.outbox import Outbox
from sync.transport import insecure_url_problem

UplinkStateName = Literal["starting", "idle", "sending", "backoff", "auth_failed"]


class MqttUplinkConfig(BaseModel):
    """The broker connection of an MQTT uplink (``[uplink.mqtt]``); the pole's user name is its id."""

    model_config = ConfigDict(extra="forbid")

    ca_file: Path | None = Field(
        None, description="CA certificate (PEM) that signed the broker's; default: the system's trusted CAs."
    )
    cert_file: Path | None = Field(None, description="Client certificate (PEM), when the broker asks for one.")
    key_file: Path | None = Field(None, description="Private key (PEM) of the client certificate.")
    keepalive_s: int = Field(60, ge=5, le=3600, description="MQTT keepalive: the broker drops us after 1.5 times this.")
    session_expiry_s: int = Field(
        7 * 86400,
        ge=0,
        description="How long the broker keeps this pole's session (its subscription to its replies and the replies "
        "queued for it) while the pole is offline.",
    )
    media: Literal["mqtt", "http"] = Field(
        "mqtt",
        description="How JPEGs and clips the receiver lacks travel: published to smartpole/v1/{pole}/media/{sha256}, "
        "or PUT over HTTP to media_url.",
    )
    media_url: str | None = Field(
        None, description="With media = 'http': base URL of a receiver for PUT /v1/media/{sha256} (with the token)."
    )

    @model_validator(mode="after")
    def _media_url_when_http(self) -> MqttUplinkConfig:
        if self.media == "http" and not self.media_url:
            raise ValueError("media = 'http' needs media_url")
        return self


class UplinkConfig(BaseModel):
    """How the pole sends its outbox upstream."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["http", "mqtt", "simulated"] = Field(
        "http",
        description="'http' posts batches to a receiver; 'mqtt' publishes them through a broker and waits for the "
        "receiver's reply; 'simulated' acknowledges locally (bench work only).",
    )
    allow_insecure: bool = Field(
        False,
        description="Allow an http:// (or mqtt://) url to a host other than this machine (no TLS: the token and "
        "events cross the network in clear). The log and the status page then warn.",
    )
    url: str = Field(
        "http://127.0.0.1:8480",
        description="kind 'http': base URL of the receiver, https:// (http:// only to this machine or with "
        "allow_insecure). kind 'mqtt': the broker, mqtts://HOST[:PORT] (mqtt:// likewise).",
    )
    token: SecretStr | None = Field(
        None, description="This pole's bearer token from 'smartpole receiver add-pole'; prefer SMARTPOLE_UPLINK_TOKEN."
    )
    max_batch_events: int = Field(1000, ge=1, le=10_000, description="Most events per batch.")
    max_batch_bytes: int = Field(1_000_000, ge=1_000, description="Most bytes of event JSON per batch, before gzip.")
    timeout_s: float = Field(
        30.0, gt=0, description="Per-request timeout (HTTP), or wait for the receiver's reply (MQTT)."
    )
    backoff_initial_s: float = Field(1.0, gt=0, description="First retry delay after a failure.")
    backoff_max_s: float = Field(60.0, gt=0, description="Cap of the exponential backoff (full jitter).")
    auth_retry_s: float = Field(300.0, gt=0, description="Retry interval after the receiver refused our token.")
    bandwidth_bytes_per_s: int = Field(
        250_000, ge=0, description="Upload cap in bytes per second (token bucket); 0 for no cap."
    )
    heartbeat_s: float = Field(60.0, gt=0, description="When idle, send a status-only batch this often.")
    linger_s: float = Field(
        0.5, ge=0, description="After the first new event, wait this long for more before sending (alerts go at once)."
    )
    gzip_level: int = Field(5, ge=1, le=9, description="gzip compression level of batches.")
    max_in_flight: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Batches awaiting the receiver's answer at once (default: 1 over HTTP, one after the other in "
        "priority order; 4 over MQTT, where each answer crosses the broker twice).",
    )
    mqtt: MqttUplinkConfig = Field(default_factory=MqttUplinkConfig, description="Broker settings for kind 'mqtt'.")
    password: SecretStr | None = Field(
        None,
        description="kind 'mqtt': the broker password of this pole (its user name is the pole id); defaults to the "
        "token. SMARTPOLE_UPLINK_PASSWORD overrides it.",
    )
    config_url: str | None = Field(
        None,
        description="Base URL of the receiver to fetch remote configuration from (GET /v1/poles/{id}/config with "
        "the token); default: url for kind 'http', mqtt.media_url for kind 'mqtt'. The TLS rule of url applies.",
    )

    @field_validator("config_url")
    @classmethod
    def _config_url_tls(cls, url: str | None, info: ValidationInfo) -> str | None:
        if url is None:
            return None
        problem = insecure_url_problem(url)
        if problem is not None and not (info.data.get("allow_insecure") and url.lower().startswith("http://")):
            raise ValueError(problem)
        return url

    def remote_config_url(self) -> str | None:
        """Where remote configuration is fetched from (an HTTP receiver), if anywhere."""
        if self.config_url is not None:
            return self.config_url
        if self.kind == "http":
            return self.url
        return self.mqtt.media_url if self.kind == "mqtt" else None

    def in_flight(self) -> int:
        return self.max_in_flight or (4 if self.kind == "mqtt" else 1)

    @field_validator("url")
    @classmethod
    def _tls_unless_allowed(cls, url: str, info: ValidationInfo) -> str:
        problem = _url_problem(url, info.data.get("kind", "http"))
        plain = url.lower().startswith(("http://", "mqtt://"))
        if problem is not None and not (info.data.get("allow_insecure") and plain):
            raise ValueError(problem)
        return url

    def insecure_warning(self) -> str | None:
        """What to warn about when ``allow_insecure`` lets a URL without TLS through."""
        return None if self.kind == "simulated" else _url_problem(self.url, self.kind)


def _url_problem(url: str, kind: str) -> str | None:
    if kind == "mqtt":
        return insecure_url_problem(url, secure=("mqtts",), plain=("mqtt",))
    return insecure_url_problem(url)


@dataclass
class UplinkState:
    """What the status page and metrics show about the link."""

    state: UplinkStateName = "starting"
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    backoff_s: float = 0.0
    batches: dict[str, int] = field(default_factory=dict)
    events_sent: int = 0
    bytes_sent: int = 0
    dead_lettered: int = 0
    remote_config_version: str | None = None
    drain_events_per_s: float = 0.0
    warning: str | None = None  # e.g. sending without TLS (allow_insecure)

    def count(self, result: str) -> None:
        self.batches[result] = self.batches.get(result, 0) + 1

    def failed(self, message: str) -> None:
        self.last_error = message
        self.last_error_at = time.time()


class Uplink(Protocol):
    state: UplinkState

    async def run(self) -> None:
        """Drain the outbox until cancelled."""

    def sync_now(self) -> None:
        """Skip any wait (idle, linger or backoff) and try at once."""


async def wait_for_work(outbox: Outbox, wake: asyncio.Event, timeout: float) -> None:
    """Sleep until a new commit, a ``sync_now`` or ``timeout``, whichever comes first."""
    waiters = {asyncio.ensure_future(outbox.wait_new(timeout)), asyncio.ensure_future(wake.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        wake.clear()
