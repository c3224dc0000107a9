"""Maintenance: event partitions created ahead, expired events and their media removed.

Run by ``smartpole receiver maintain`` (a cron job) and by every receiver at start and then every
``retention.maintenance_interval_s``; the store lets one process at a time do it. Media files go
last, and only those no remaining event refers to: a file is first forgotten by the database (so a
pole sending it again is asked to upload it), then deleted from the media store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import structlog

from receiver.config import RetentionSection
from receiver.mediastore.base import MediaStore, MediaUnavailable
from receiver.metrics import ReceiverMetrics
from receiver.store.base import PartitionLayout, RetentionRules, Store, StoreError

log = structlog.get_logger("receiver")


def rules_of(config: RetentionSection) -> RetentionRules:
    return RetentionRules(config.default_days, dict(config.types))


def layout_of(config: RetentionSection) -> PartitionLayout:
    return PartitionLayout(config.partition_days, config.partitions_ahead_days, config.lock_timeout_s)


@dataclass(frozen=True, slots=True)
class MaintenanceSummary:
    """What ``maintain`` prints, as JSON."""

    backend: str
    partitions_created: int
    partitions_dropped: int
    rows_dropped: int
    rows_trimmed: int
    media_deleted: int
    media_failed: int  # files the media store could not delete (left in it, unreferenced; logged)
    deferred: int
    skipped: str | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


async def run_maintenance(
    store: Store, media: MediaStore, config: RetentionSection, now: float | None = None, retention: bool = True
) -> MaintenanceSummary:
    """One maintenance run: partitions ahead and, with ``retention``, expired events and media."""
    started = time.perf_counter()
    report = await store.maintain(rules_of(config), layout_of(config), time.time() if now is None else now, retention)
    deleted = failed = 0

    async def delete(sha256: str) -> None:
        nonlocal deleted, failed
        try:
            await media.delete(sha256)
            deleted += 1
        except (MediaUnavailable, OSError) as exc:
            failed += 1
            log.warning("media_delete_failed", sha256=sha256, error=str(exc))

    if config.delete_media and report.media:
        await store.release_media(sorted(report.media), delete)
    return MaintenanceSummary(
        store.backend,
        report.partitions_created,
        report.partitions_dropped,
        report.rows_dropped,
        report.rows_trimmed,
        deleted,
        failed,
        report.deferred,
        report.skipped,
        round(time.perf_counter() - started, 3),
    )


async def maintenance_loop(
    store: Store, media: MediaStore, config: RetentionSection, metrics: ReceiverMetrics | None = None
) -> None:
    """Maintain at start and then every interval, until cancelled. A failed run is logged and the next one
    comes at its time: whatever went wrong, the receiver goes on serving."""
    metrics = metrics or ReceiverMetrics()
    while True:
        try:
            summary = await run_maintenance(store, media, config, retention=config.retention_in_receiver)
        except StoreError as exc:
            metrics.maintenance_runs.labels("failed").inc()
            log.error("maintenance_failed", error=str(exc))
        except Exception:
            metrics.maintenance_runs.labels("failed").inc()
            log.exception("maintenance_failed")
        else:
            metrics.maintenance_runs.labels("skipped" if summary.skipped else "done").inc()
            if not summary.skipped:
                metrics.maintenance_last_done.set_to_current_time()
            metrics.retention_events.labels("dropped").inc(summary.rows_dropped)
            metrics.retention_events.labels("trimmed").inc(summary.rows_trimmed)
            metrics.retention_media.inc(summary.media_deleted)
            log.info("maintenance_done", **summary.as_dict())
        await asyncio.sleep(config.maintenance_interval_s)
