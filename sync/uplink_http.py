"""Sending the outbox to the receiver over HTTP: wire protocol v1, at least once.

An event leaves the outbox only when the receiver has said it holds it
(accepted or duplicate) or refuses it for good (then it goes to the dead
letters with the receiver's reason). Anything else, a timeout, a dropped
connection, a 5xx, leaves the events queued and the same batch is tried again
with exponential backoff and full jitter; the receiver's unique key turns the
replays into duplicates. Media follows its events: a batch is acknowledged
only after the JPEGs the receiver says it lacks have been uploaded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog
import uuid_utils
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from sync.events import Priority
from sync.outbox import Outbox, OutboxRecord
from sync.protocol import BATCHES_PATH, BatchReply, ErrorReply, compress, encode_batch
from sync.ratelimit import TokenBucket
from sync.uplink import UplinkConfig, UplinkState, wait_for_work

log = structlog.get_logger("uplink")

StatusProvider = Callable[[], Awaitable[dict[str, Any]]]


class TransientError(Exception):
    """The receiver may take this batch later: retry with backoff."""


class AuthError(Exception):
    """The receiver refused our token: stop sending and retry slowly."""


class HttpUplink:
    """Drains the outbox to a receiver; one instance per pole, started with ``run``."""

    def __init__(self, outbox: Outbox, config: UplinkConfig, pole_id: str, status: StatusProvider) -> None:
        self.outbox = outbox
        self.config = config
        self.pole_id = pole_id
        self.status = status
        self.state = UplinkState()
        self.bucket = TokenBucket(config.bandwidth_bytes_per_s, burst=max(config.bandwidth_bytes_per_s, 64_000))
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._last_sent = 0.0
        self._base = config.url.rstrip("/")

    def sync_now(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        headers = {"User-Agent": "smartpole-uplink/1"}
        if self.config.token is not None:
            headers["Authorization"] = f"Bearer {self.config.token.get_secret_value()}"
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout, raise_for_status=False) as session:
            self._session = session
            try:
                await self._loop()
            finally:
                self._session = None

    async def _loop(self) -> None:
        while True:
            batch = await self.outbox.next_batch(self.config.max_batch_events, self.config.max_batch_bytes)
            if not batch:
                if time.monotonic() - self._last_sent >= self.config.heartbeat_s:
                    await self._deliver([])
                    continue
                self.state.state = "idle"
                await wait_for_work(self.outbox, self._wake, self._until_heartbeat())
                if self.config.linger_s and not self._wake.is_set():
                    await self._linger()
                continue
            await self._deliver(batch)

    def _until_heartbeat(self) -> float:
        return max(0.01, self.config.heartbeat_s - (time.monotonic() - self._last_sent))

    async def _linger(self) -> None:
        """Let a burst gather into one batch, unless an alert is waiting."""
        head = await self.outbox.next_batch(1, 1)
        if head and head[0].priority == Priority.ALERT:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), self.config.linger_s)
        except TimeoutError:
            pass

    async def _deliver(self, batch: list[OutboxRecord]) -> None:
        """Send one batch until it is settled, backing off between attempts."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            wait=wait_random_exponential(multiplier=self.config.backoff_initial_s, max=self.config.backoff_max_s),
            before_sleep=self._on_retry,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._send(batch)
        except AuthError as exc:
            self.state.state = "auth_failed"
            self.state.failed(str(exc))
            self.state.backoff_s = self.config.auth_retry_s
            log.error("uplink_auth_refused", error=str(exc), retry_in_s=self.config.auth_retry_s)
            await self._sleep(self.config.auth_retry_s)
            return
        self.state.backoff_s = 0.0

    def _on_retry(self, retry_state: RetryCallState) -> None:
        delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
        error = retry_state.outcome.exception() if retry_state.outcome else None
        self.state.state = "backoff"
        self.state.backoff_s = delay
        self.state.failed(str(error))
        log.warning("uplink_retry", error=str(error), attempt=retry_state.attempt_number, retry_in_s=round(delay, 2))

    async def _sleep(self, seconds: float) -> None:
        """Backoff that 'sync now' can cut short."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    async def _send(self, batch: list[OutboxRecord]) -> None:
        assert self._session is not None
        self.state.state = "sending"
        started = time.monotonic()
        document = encode_batch(
            self.pole_id, str(uuid_utils.uuid7()), time.time(), [r.body for r in batch], await self.status()
        )
        body = compress(document, self.config.gzip_level)
        await self.bucket.take(len(body))
        try:
            async with self._session.post(
                self._base + BATCHES_PATH,
                data=body,
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            ) as resp:
                payload = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.state.count("network_error")
            raise TransientError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        self.state.bytes_sent += len(body)
        self._last_sent = time.monotonic()

        if status == 200:
            await self._settle(batch, payload)
            elapsed = max(time.monotonic() - started, 1e-3)
            rate = len(batch) / elapsed
            self.state.drain_events_per_s = rate if not self.state.drain_events_per_s else (
                0.8 * self.state.drain_events_per_s + 0.2 * rate
            )
            return
        reason = _error_text(payload) or f"HTTP {status}"
        if status in (401, 403):
            self.state.count("unauthorized")
            raise AuthError(f"receiver answered {status}: {reason}")
        if status in (400, 413) and batch:
            self.state.count("refused")
            await self._refused(batch, status, payload, reason)
            return
        self.state.count("server_error" if status >= 500 else "client_error")
        raise TransientError(f"receiver answered {status}: {reason}")

    async def _settle(self, batch: list[OutboxRecord], payload: bytes) -> None:
        try:
            reply = BatchReply.model_validate_json(payload)
        except ValidationError as exc:
            self.state.count("bad_reply")
            raise TransientError(f"unreadable reply from receiver: {exc.errors()[0]['msg']}") from exc
        if reply.missing_media:
            await self._upload_media(reply.missing_media)
        delivered = reply.accepted + reply.duplicates
        await self.outbox.ack(delivered)
        if reply.rejected:
            moved = await self.outbox.reject_many({r.id: r.reason for r in reply.rejected})
            self.state.dead_lettered += moved
        self.state.count("ok")
        self.state.events_sent += len(reply.accepted)
        self.state.last_success = time.time()
        self.state.remote_config_version = reply.config_version
        if batch:
            log.debug("uplink_batch_settled", accepted=len(reply.accepted), duplicates=len(reply.duplicates))

    async def _refused(self, batch: list[OutboxRecord], status: int, payload: bytes, reason: str) -> None:
        """A 400 or 413: dead-letter what the receiver names, or split until it can name it."""
        try:
            named = ErrorReply.model_validate_json(payload).rejected
        except ValidationError:
            named = []
        queued = {r.id for r in batch}
        named = [r for r in named if r.id in queued]
        if named:
            moved = await self.outbox.reject_many({r.id: r.reason for r in named})
            self.state.dead_lettered += moved
            log.warning("uplink_events_dead_lettered", events=moved, first=named[0].reason)
            return
        if len(batch) == 1:
            await self.outbox.reject_many({batch[0].id: f"receiver answered {status}: {reason}"})
            self.state.dead_lettered += 1
            log.warning("uplink_event_dead_lettered", id=batch[0].id, status=status, reason=reason)
            return
        half = len(batch) // 2
        for part in (batch[:half], batch[half:]):
            await self._send(part)

    async def _upload_media(self, shas: list[str]) -> None:
        assert self._session is not None
        for sha in shas:
            data = await self.outbox.media(sha)
            if data is None:
                continue  # evicted with its last event; nothing left to send
            await self.bucket.take(len(data))
            try:
                async with self._session.put(
                    f"{self._base}/v1/media/{sha}", data=data, headers={"Content-Type": "image/jpeg"}
                ) as resp:
                    payload = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TransientError(f"media upload: {type(exc).__name__}: {exc}") from exc
            self.state.bytes_sent += len(data)
            if status in (200, 201):
                continue
            reason = _error_text(payload) or f"HTTP {status}"
            if status in (401, 403):
                raise AuthError(f"receiver answered {status} to media: {reason}")
            if status >= 500 or status == 429:
                raise TransientError(f"media upload answered {status}: {reason}")
            # The receiver will never take this JPEG; its event is stored, so carry on without it.
            self.state.failed(f"media {sha[:12]} refused: {reason}")
            log.error("uplink_media_refused", sha256=sha, status=status, reason=reason)


def _error_text(payload: bytes) -> str | None:
    try:
        return ErrorReply.model_validate_json(payload).error
    except ValidationError:
        text = payload[:200].decode("utf-8", "replace").strip()
        return text or None
