"""Sending the outbox to the receiver: wire protocol v1, at least once, over any transport.

An event leaves the outbox only when the receiver has said it holds it
(accepted or duplicate) or refuses it for good (then it goes to the dead
letters with the receiver's reason). Anything else, a timeout, a dropped
connection, a 5xx, a reply that never came back through the broker, leaves the
events queued and they are sent again with exponential backoff and full
jitter; the receiver's unique key turns the replays into duplicates. Media
follows its events: a batch is acknowledged only after the JPEGs and clips the
receiver says it lacks have been delivered.

Batches go out in *lanes*: each lane sends one batch and waits for its answer,
while reading and compressing the next one; ``max_in_flight`` lanes run side by
side (one over HTTP, so batches arrive in priority order; several over MQTT,
where every answer crosses the broker twice). A lane reads the head of the queue
minus what other lanes hold or what is being acknowledged, under one lock, so no
event is ever in two batches at once. A failed attempt throws away the batch
read behind it and the retry reads the head afresh: after an outage the backlog
goes out most important first, not in whatever order it was read when the link fell.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import uuid_utils
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from sync.bandwidth import TokenBucket
from sync.events import Priority
from sync.outbox import Outbox, OutboxError, OutboxRecord
from sync.protocol import BatchReply, ErrorReply, compress, encode_batch
from sync.uplink.base import UplinkConfig, UplinkState
from sync.uplink.transport import CredentialsRefused, Transport, TransportError

log = structlog.get_logger("uplink")

StatusProvider = Callable[[], Awaitable[dict[str, Any]]]
_SETTLE_AT_STOP_S = 3.0  # within systemd's stop timeout, beyond the outbox's commit window


class TransientError(Exception):
    """The receiver may take this batch later: retry with backoff."""


class AuthError(Exception):
    """The receiver refused our credentials: stop sending and retry slowly."""


@dataclass
class _Prepared:
    batch_id: str
    records: list[OutboxRecord]
    body: bytes

    @property
    def seqs(self) -> set[int]:
        return {r.seq for r in self.records}


@dataclass
class _Settlement:
    """What an answer means for the outbox; ``seqs`` are released once it is applied."""

    seqs: list[int]
    delivered: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)


class BatchUplink:
    """Drains the outbox to a receiver through ``transport``; one per pole, started with ``run``."""

    def __init__(
        self,
        outbox: Outbox,
        config: UplinkConfig,
        pole_id: str,
        status: StatusProvider,
        transport: Transport,
        on_config_version: Callable[[str], None] | None = None,
    ) -> None:
        """``on_config_version`` hears the target config version of every reply that carries one."""
        self.outbox = outbox
        self.on_config_version = on_config_version
        self.config = config
        self.pole_id = pole_id
        self.status = status
        self.transport = transport
        self.state = UplinkState()
        self.bucket = TokenBucket(config.bandwidth_bytes_per_s, burst=max(config.bandwidth_bytes_per_s, 64_000))
        self._lanes = config.in_flight()
        self._wake = asyncio.Event()  # 'sync now': cut any backoff or linger short
        self._work = asyncio.Event()  # new events, events released for another read, or 'sync now'
        self._claimed: set[int] = set()  # seqs in a lane's batch, sent or read ahead
        self._acking: set[int] = set()  # seqs whose answer is being applied
        self._read_lock = asyncio.Lock()
        self._settled: asyncio.Queue[_Settlement] = asyncio.Queue()
        self._last_sent = 0.0
        self._applying: _Settlement | None = None  # the answers the acker is applying right now
        self.state.warning = config.insecure_warning()
        if self.state.warning is not None:
            log.warning("uplink_insecure", url=config.url, problem=self.state.warning)

    def sync_now(self) -> None:
        self._wake.set()
        self._work.set()

    async def run(self) -> None:
        self._claimed.clear()
        self._acking.clear()
        self._settled = asyncio.Queue()
        self._applying = None
        try:
            async with self.transport, asyncio.TaskGroup() as tg:
                tg.create_task(self._ack_loop(), name="uplink-ack")
                tg.create_task(self._watch_outbox(), name="uplink-watch")
                for lane in range(self._lanes):
                    tg.create_task(self._lane(lane), name=f"uplink-lane-{lane}")
        finally:
            await self._settle_at_stop()

    async def _settle_at_stop(self) -> None:
        """Stopping: the receiver's answers already in hand are applied (within a bound), so what it
        holds is not sent again at the next start. The outbox may wait up to its commit window."""
        pending = [] if self._applying is None else [self._applying]
        while not self._settled.empty():
            pending.append(self._settled.get_nowait())
        if not pending:
            return
        try:
            async with asyncio.timeout(_SETTLE_AT_STOP_S):
                for settlement in pending:
                    await self._apply(settlement)
        except (TimeoutError, OutboxError) as exc:
            log.warning("uplink_answers_not_applied_at_stop", batches=len(pending), error=str(exc) or "timeout")

    async def _watch_outbox(self) -> None:
        """The outbox tells one consumer about new commits; every lane may want to know."""
        while True:
            if await self.outbox.wait_new(3600.0):
                self._work.set()

    # ------------------------------------------------------------------ reading

    async def _claim_next(self) -> _Prepared:
        """Read and compress the head of the queue that no lane holds; claim its events."""
        async with self._read_lock:
            self._work.clear()
            exclude = self._claimed | self._acking
            records = await self.outbox.next_batch(self.config.max_batch_events, self.config.max_batch_bytes, exclude)
            self._claimed.update(r.seq for r in records)
        try:
            return await self._prepare(records)
        except BaseException:
            self._claimed.difference_update(r.seq for r in records)
            raise

    def _release(self, prepared: _Prepared) -> None:
        self._claimed.difference_update(prepared.seqs)
        if prepared.records:
            self._work.set()

    async def _prepare(self, records: list[OutboxRecord]) -> _Prepared:
        batch_id = str(uuid_utils.uuid7())
        document = encode_batch(self.pole_id, batch_id, time.time(), [r.body for r in records], await self.status())
        return _Prepared(batch_id, records, compress(document, self.config.gzip_level))

    def _until_heartbeat(self) -> float:
        return max(0.0, self.config.heartbeat_s - (time.monotonic() - self._last_sent))

    # ------------------------------------------------------------------ lanes

    async def _lane(self, lane: int) -> None:
        prepared = await self._claim_next()
        while True:
            if not prepared.records:
                # Lane 0 keeps the receiver informed with status-only heartbeats; the others just wait.
                wait = self._until_heartbeat() if lane == 0 else self.config.heartbeat_s
                if wait > 0:
                    if lane == 0 and not self._claimed:
                        self.state.state = "idle"
                    await self._wait_for_work(wait)
                    prepared = await self._linger_then_claim()
                    continue
            prepared = await self._deliver(prepared)

    async def _wait_for_work(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):  # not wait_for: see Outbox.wait_new
                await self._work.wait()
        except TimeoutError:
            pass

    async def _linger_then_claim(self) -> _Prepared:
        """Gather a burst for ``linger_s`` unless what waits is an alert or 'sync now' was pressed."""
        if self.config.linger_s and not self._wake.is_set():
            head = await self.outbox.next_batch(1, 1, self._claimed | self._acking)
            if head and head[0].priority != Priority.ALERT:
                await self._interruptible_sleep(self.config.linger_s)
        return await self._claim_next()

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
                            prepared = await self._claim_next()
                        ahead = asyncio.create_task(self._claim_next())
                        try:
                            settlement = await self._send(prepared)
                        except BaseException:
                            self._release(prepared)
                            ahead.cancel()
                            released = await asyncio.gather(ahead, return_exceptions=True)
                            if isinstance(released[0], _Prepared):
                                self._release(released[0])
                            raise
            except AuthError as exc:
                self.state.state = "auth_failed"
                self.state.failed(str(exc))
                self.state.backoff_s = self.config.auth_retry_s
                log.error("uplink_auth_refused", error=str(exc), retry_in_s=self.config.auth_retry_s)
                await self._interruptible_sleep(self.config.auth_retry_s)
                prepared = await self._claim_next()
                continue
            self.state.backoff_s = 0.0
            self._acking.update(settlement.seqs)
            self._claimed.difference_update(settlement.seqs)
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

    # ------------------------------------------------------------------ one batch

    async def _send(self, prepared: _Prepared) -> _Settlement:
        records = prepared.records
        started = time.monotonic()
        self.state.state = "sending"
        await self.bucket.take(len(prepared.body))
        try:
            answer = await self.transport.send_batch(prepared.batch_id, prepared.body)
        except CredentialsRefused as exc:
            self.state.count("unauthorized")
            raise AuthError(str(exc)) from exc
        except TransportError as exc:
            self.state.count("network_error")
            raise TransientError(str(exc)) from exc
        self.state.bytes_sent += len(prepared.body)
        self._last_sent = time.monotonic()
        if answer.status == 200:
            settlement = await self._settle(records, answer.payload)
            rate = len(records) / max(time.monotonic() - started, 1e-3)
            previous = self.state.drain_events_per_s
            self.state.drain_events_per_s = rate if not previous else 0.8 * previous + 0.2 * rate
            return settlement
        reason = _error_text(answer.payload) or f"HTTP {answer.status}"
        if answer.status in (401, 403):
            self.state.count("unauthorized")
            raise AuthError(f"receiver answered {answer.status}: {reason}")
        if answer.status in (400, 413) and records:
            self.state.count("refused")
            return await self._refused(records, answer.status, answer.payload, reason)
        self.state.count("server_error" if answer.status >= 500 else "client_error")
        raise TransientError(f"receiver answered {answer.status}: {reason}")

    async def _settle(self, records: list[OutboxRecord], payload: bytes) -> _Settlement:
        try:
            reply = BatchReply.model_validate_json(payload)
        except ValidationError as exc:
            self.state.count("bad_reply")
            raise TransientError(f"unreadable reply from receiver: {exc.errors()[0]['msg']}") from exc
        if reply.missing_media:
            await self._deliver_media(reply.missing_media)
        self.state.count("ok")
        self.state.events_sent += len(reply.accepted)
        self.state.last_success = time.time()
        self.state.remote_config_version = reply.config_version
        if reply.config_version is not None and self.on_config_version is not None:
            self.on_config_version(reply.config_version)
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
            await self._apply(await self._send(await self._prepare(part)))
        return _Settlement(seqs)

    async def _deliver_media(self, shas: list[str]) -> None:
        for sha in shas:
            data = await self.outbox.media(sha)
            if data is None:
                continue  # evicted with its last event; nothing left to send
            await self.bucket.take(len(data))
            try:
                answer = await self.transport.send_media(sha, data)
            except CredentialsRefused as exc:
                raise AuthError(str(exc)) from exc
            except TransportError as exc:
                raise TransientError(f"media upload: {exc}") from exc
            self.state.bytes_sent += len(data)
            if answer.status in (200, 201):
                continue
            reason = _error_text(answer.payload) or f"HTTP {answer.status}"
            if answer.status in (401, 403):
                raise AuthError(f"receiver answered {answer.status} to media: {reason}")
            if answer.status >= 500 or answer.status == 429:
                raise TransientError(f"media upload answered {answer.status}: {reason}")
            # The receiver will never take this file; its event is stored, so carry on without it.
            self.state.failed(f"media {sha[:12]} refused: {reason}")
            log.error("uplink_media_refused", sha256=sha, status=answer.status, reason=reason)

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
            self._applying = settlement
            await self._apply(settlement)
            self._applying = None
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
