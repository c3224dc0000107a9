"""Sending the outbox to the receiver over HTTP: wire protocol v1, at least once.

An event leaves the outbox only when the receiver has said it holds it
(accepted or duplicate) or refuses it for good (then it goes to the dead
letters with the receiver's reason). Anything else, a timeout, a dropped
connection, a 5xx, leaves the events queued and the same batch is tried again
with exponential backoff and full jitter; the receiver's unique key turns the
replays into duplicates. Media follows its events: a batch is acknowledged
only after the JPEGs the receiver says it lacks have been uploaded.

The pole's work overlaps the receiver's: while a batch is in flight the next
one is read and compressed, and the previous reply is committed to the outbox
by a separate task. Batches still go one at a time, in priority order; events
on their way are excluded from the next read until their reply is applied. A
failed attempt throws away the batch read behind it, and the retry reads the
head of the queue afresh: after an outage the backlog goes out most important
first, not in whatever order it happened to be read when the link fell.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
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


@dataclass
class _Prepared:
    records: list[OutboxRecord]
    body: bytes


@dataclass
class _Settlement:
    """What a reply means for the outbox; ``seqs`` are released once it is applied."""

    seqs: list[int]
    delivered: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)


class HttpUplink:
    """Drains the outbox to a receiver; one instance per pole, started with ``run``."""

    def __init__(self, outbox: Outbox, config: UplinkConfig, pole_id: str, status: StatusProvider) -> None:
        self.outbox = outbox
        self.config = config
        self.pole_id = pole_id
        self.status = status
        self.state = UplinkState()
        self.bucket = TokenBucket(config.bandwidth_bytes_per_s, burst=max(config.bandwidth_bytes_per_s, 64_000))
        self._wake = asyncio.Event()  # 'sync now': cut any backoff or linger short
        self._work = asyncio.Event()  # events released for another read, or 'sync now'
        self._acking: set[int] = set()  # seqs whose reply is being applied
        self._settled: asyncio.Queue[_Settlement] = asyncio.Queue()
        self._session: aiohttp.ClientSession | None = None
        self._last_sent = 0.0
        self._base = config.url.rstrip("/")

    def sync_now(self) -> None:
        self._wake.set()
        self._work.set()

    async def run(self) -> None:
        headers = {"User-Agent": "smartpole-uplink/1"}
        if self.config.token is not None:
            headers["Authorization"] = f"Bearer {self.config.token.get_secret_value()}"
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        self._acking.clear()
        self._settled = asyncio.Queue()
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            self._session = session
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._ack_loop(), name="uplink-ack")
                    await self._send_loop()
            finally:
                self._session = None

    # ------------------------------------------------------------------ sender

    async def _read(self, in_flight: Sequence[OutboxRecord] = ()) -> _Prepared:
        """Read and compress the next batch, skipping what is in flight or being acknowledged."""
        exclude = self._acking.union(r.seq for r in in_flight)
        records = await self.outbox.next_batch(self.config.max_batch_events, self.config.max_batch_bytes, exclude)
        return _Prepared(records, await self._encode(records))

    async def _encode(self, records: list[OutboxRecord]) -> bytes:
        document = encode_batch(
            self.pole_id, str(uuid_utils.uuid7()), time.time(), [r.body for r in records], await self.status()
        )
        return compress(document, self.config.gzip_level)

    def _until_heartbeat(self) -> float:
        return max(0.0, self.config.heartbeat_s - (time.monotonic() - self._last_sent))

    async def _send_loop(self) -> None:
        prepared = await self._read()
        while True:
            if not prepared.records:
                if self._until_heartbeat() > 0:
                    self.state.state = "idle"
                    await wait_for_work(self.outbox, self._work, self._until_heartbeat())
                    if self.config.linger_s and not self._wake.is_set():
                        head = await self.outbox.next_batch(1, 1, self._acking)
                        if head and head[0].priority != Priority.ALERT:
                            await self._interruptible_sleep(self.config.linger_s)  # gather a burst
                    prepared = await self._read()
                    continue
                prepared = _Prepared([], await self._encode([]))  # heartbeat: a fresh status
            prepared = await self._deliver(prepared)

    async def _deliver(self, prepared: _Prepared) -> _Prepared:
        """Send ``prepared`` (or, after a failure, the head of the queue read afresh) until one
        batch is settled; return the batch read behind it."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            wait=wait_random_exponential(multiplier=self.config.backoff_initial_s, max=self.config.backoff_max_s),
            before_sleep=self._on_retry,
            sleep=self._interruptible_sleep,
            reraise=True,
        )
        while True:
            try:
                async for attempt in retrying:
                    with attempt:
                        if attempt.retry_state.attempt_number > 1:
                            prepared = await self._read()
                        ahead = asyncio.create_task(self._read(prepared.records))
                        try:
                            settlement = await self._send(prepared)
                        except BaseException:
                            ahead.cancel()
                            await asyncio.gather(ahead, return_exceptions=True)
                            raise
            except AuthError as exc:
                self.state.state = "auth_failed"
                self.state.failed(str(exc))
                self.state.backoff_s = self.config.auth_retry_s
                log.error("uplink_auth_refused", error=str(exc), retry_in_s=self.config.auth_retry_s)
                await self._interruptible_sleep(self.config.auth_retry_s)
                prepared = await self._read()
                continue
            self.state.backoff_s = 0.0
            self._acking.update(settlement.seqs)
            await self._settled.put(settlement)
            return await ahead

    def _on_retry(self, retry_state: RetryCallState) -> None:
        delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
        error = retry_state.outcome.exception() if retry_state.outcome else None
        self.state.state = "backoff"
        self.state.backoff_s = delay
        self.state.failed(str(error))
        log.warning("uplink_retry", error=str(error), attempt=retry_state.attempt_number, retry_in_s=round(delay, 2))

    async def _interruptible_sleep(self, seconds: float) -> None:
        """A wait that 'sync now' cuts short."""
        self._wake.clear()
        try:
            async with asyncio.timeout(seconds):  # not wait_for: see Outbox.wait_new
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        assert self._session is not None
        self.state.state = "sending"
        await self.bucket.take(len(body))
        try:
            async with self._session.post(
                self._base + BATCHES_PATH,
                data=body,
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            ) as resp:
                payload = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.state.count("network_error")
            raise TransientError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        self.state.bytes_sent += len(body)
        self._last_sent = time.monotonic()
        return resp.status, payload

    async def _send(self, prepared: _Prepared) -> _Settlement:
        records = prepared.records
        started = time.monotonic()
        status, payload = await self._post(prepared.body)
        if status == 200:
            settlement = await self._settle(records, payload)
            rate = len(records) / max(time.monotonic() - started, 1e-3)
            previous = self.state.drain_events_per_s
            self.state.drain_events_per_s = rate if not previous else 0.8 * previous + 0.2 * rate
            return settlement
        reason = _error_text(payload) or f"HTTP {status}"
        if status in (401, 403):
            self.state.count("unauthorized")
            raise AuthError(f"receiver answered {status}: {reason}")
        if status in (400, 413) and records:
            self.state.count("refused")
            return await self._refused(records, status, payload, reason)
        self.state.count("server_error" if status >= 500 else "client_error")
        raise TransientError(f"receiver answered {status}: {reason}")

    async def _settle(self, records: list[OutboxRecord], payload: bytes) -> _Settlement:
        try:
            reply = BatchReply.model_validate_json(payload)
        except ValidationError as exc:
            self.state.count("bad_reply")
            raise TransientError(f"unreadable reply from receiver: {exc.errors()[0]['msg']}") from exc
        if reply.missing_media:
            await self._upload_media(reply.missing_media)
        self.state.count("ok")
        self.state.events_sent += len(reply.accepted)
        self.state.last_success = time.time()
        self.state.remote_config_version = reply.config_version
        return _Settlement(
            [r.seq for r in records],
            reply.accepted + reply.duplicates,
            {r.id: r.reason for r in reply.rejected},
        )

    async def _refused(self, records: list[OutboxRecord], status: int, payload: bytes, reason: str) -> _Settlement:
        """A 400 or 413: dead-letter what the receiver names, or split until it can name it."""
        seqs = [r.seq for r in records]
        try:
            named = ErrorReply.model_validate_json(payload).rejected
        except ValidationError:
            named = []
        queued = {r.id for r in records}
        named = [r for r in named if r.id in queued]
        if named:
            # The others were not stored; released, they go again in the next batch.
            log.warning("uplink_events_refused", events=len(named), first=named[0].reason)
            return _Settlement(seqs, rejected={r.id: r.reason for r in named})
        if len(records) == 1:
            log.warning("uplink_event_refused", id=records[0].id, status=status, reason=reason)
            return _Settlement(seqs, rejected={records[0].id: f"receiver answered {status}: {reason}"})
        half = len(records) // 2
        for part in (records[:half], records[half:]):
            await self._apply(await self._send(_Prepared(part, await self._encode(part))))
        return _Settlement(seqs)

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

    # ------------------------------------------------------------------ acker

    async def _ack_loop(self) -> None:
        while True:
            settlement = await self._settled.get()
            # Whatever settled while the last acknowledgement waited for the outbox's commit window
            # goes in one: acknowledging batch by batch would drain no faster than a batch per window.
            while not self._settled.empty():
                more = self._settled.get_nowait()
                settlement.seqs += more.seqs
                settlement.delivered += more.delivered
                settlement.rejected.update(more.rejected)
            await self._apply(settlement)
            self._acking.difference_update(settlement.seqs)
            self._work.set()

    async def _apply(self, settlement: _Settlement) -> None:
        if settlement.delivered:
            await self.outbox.ack(settlement.delivered)
        if settlement.rejected:
            moved = await self.outbox.reject_many(settlement.rejected)
            self.state.dead_lettered += moved
            if moved:
                log.warning("uplink_dead_lettered", events=moved, first=next(iter(settlement.rejected.values())))


def _error_text(payload: bytes) -> str | None:
    try:
        return ErrorReply.model_validate_json(payload).error
    except ValidationError:
        text = payload[:200].decode("utf-8", "replace").strip()
        return text or None
