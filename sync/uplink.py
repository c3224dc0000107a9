"""The seam between the outbox and the network: an ``Uplink`` drains the outbox upstream.

Two implementations: :class:`sync.uplink_http.HttpUplink` speaks wire protocol v1
to a receiver; :class:`SimulatedUplink` acknowledges everything locally, for
developing on a bench with no receiver.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from sync.outbox import Outbox
from sync.transport import insecure_url_problem

UplinkStateName = Literal["starting", "idle", "sending", "backoff", "auth_failed"]


class UplinkConfig(BaseModel):
    """How the pole sends its outbox upstream."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["http", "simulated"] = Field(
        "http", description="'http' sends to a receiver; 'simulated' acknowledges locally (bench work only)."
    )
    allow_insecure: bool = Field(
        False,
        description="Allow an http:// url to a host other than this machine (no TLS: the token and events "
        "cross the network in clear). The log and the status page then warn.",
    )
    url: str = Field(
        "http://127.0.0.1:8480",
        description="Base URL of the receiver: https://, or http:// to this machine (or with allow_insecure).",
    )
    token: SecretStr | None = Field(
        None, description="This pole's bearer token from 'smartpole receiver add-pole'; prefer SMARTPOLE_UPLINK_TOKEN."
    )
    max_batch_events: int = Field(1000, ge=1, le=10_000, description="Most events per batch.")
    max_batch_bytes: int = Field(1_000_000, ge=1_000, description="Most bytes of event JSON per batch, before gzip.")
    timeout_s: float = Field(30.0, gt=0, description="Per-request timeout.")
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

    @field_validator("url")
    @classmethod
    def _tls_unless_allowed(cls, url: str, info: ValidationInfo) -> str:
        problem = insecure_url_problem(url)
        if problem is not None and not (info.data.get("allow_insecure") and url.lower().startswith("http://")):
            raise ValueError(problem)
        return url

    def insecure_warning(self) -> str | None:
        """What to warn about when ``allow_insecure`` lets a URL without TLS through."""
        return insecure_url_problem(self.url) if self.kind == "http" else None


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


class SimulatedUplink:
    """Acknowledges every batch after ``delay_s``, as a perfect link would."""

    def __init__(self, outbox: Outbox, config: UplinkConfig, delay_s: float = 0.05) -> None:
        self.outbox = outbox
        self.config = config
        self.delay_s = delay_s
        self.state = UplinkState()
        self._wake = asyncio.Event()

    def sync_now(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            batch = await self.outbox.next_batch(self.config.max_batch_events, self.config.max_batch_bytes)
            if not batch:
                self.state.state = "idle"
                await wait_for_work(self.outbox, self._wake, self.config.heartbeat_s)
                continue
            self.state.state = "sending"
            await asyncio.sleep(self.delay_s)
            await self.outbox.ack([r.id for r in batch])
            self.state.count("ok")
            self.state.events_sent += len(batch)
            self.state.last_success = time.time()
