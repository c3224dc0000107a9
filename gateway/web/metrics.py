"""The pole's Prometheus metrics, on a registry of its own, served at ``/metrics``.

Two kinds: instruments fed as things happen (inference durations, events
committed), and values read at scrape time from the same raw status the
status page shows (a collector), so both always agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from gateway.status import PoleStatus
from gateway.vision.health import Condition

CONDITIONS: tuple[Condition, ...] = get_args(Condition)

INFERENCE_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class _StatusCollector(Collector):
    def __init__(self) -> None:
        self.status: PoleStatus | None = None

    def describe(self) -> list[Metric]:
        return []  # names vary with the configuration; nothing to reserve up front

    def collect(self) -> Iterator[Metric]:
        s = self.status
        if s is None:
            return
        cams = s.cameras
        yield _family(
            CounterMetricFamily,
            "smartpole_frames",
            "Frames read per camera.",
            ["camera"],
            [([c.name], c.frames_read) for c in cams],
        )
        yield _family(
            CounterMetricFamily,
            "smartpole_frames_dropped",
            "Frames replaced by a newer one before the pipeline took them.",
            ["camera"],
            [([c.name], c.frames_dropped) for c in cams],
        )
        yield _family(
            GaugeMetricFamily,
            "smartpole_pipeline_fps",
            "Frames processed per second.",
            ["camera"],
            [([c.name], c.pipeline_fps) for c in cams],
        )
        yield _family(
            GaugeMetricFamily,
            "smartpole_camera_up",
            "1 while the camera delivers frames.",
            ["camera"],
            [([c.name], 1.0 if c.up else 0.0) for c in cams],
        )
        yield _family(
            GaugeMetricFamily,
            "smartpole_camera_condition",
            "1 while the camera has the condition (down, dark, frozen; covered or moved: tampered).",
            ["camera", "condition"],
            [([c.name, k], 1.0 if k in c.conditions else 0.0) for c in cams for k in CONDITIONS],
        )
        outbox = s.outbox
        yield _family(
            GaugeMetricFamily,
            "smartpole_outbox_events",
            "Events waiting in the outbox.",
            ["priority"],
            [([p], n) for p, n in outbox.depth.items()],
        )
        yield GaugeMetricFamily("smartpole_outbox_bytes", "Bytes of queued events and media.", value=outbox.bytes_used)
        yield GaugeMetricFamily(
            "smartpole_outbox_max_bytes", "The outbox's cap: past it, events are evicted.", value=outbox.max_bytes
        )
        yield GaugeMetricFamily(
            "smartpole_outbox_oldest_age_seconds",
            "Age of the oldest queued event (0 when empty).",
            value=outbox.oldest_age_s or 0.0,
        )
        yield _family(
            CounterMetricFamily,
            "smartpole_outbox_evicted",
            "Events evicted or expired, by reason.",
            ["reason"],
            [([r], n) for r, n in outbox.evicted.items()],
        )
        yield GaugeMetricFamily(
            "smartpole_outbox_dead_letters",
            "Events the receiver refused, kept for inspection.",
            value=outbox.dead_letters,
        )
        if outbox.written_bytes is not None:  # None where the kernel keeps no per-thread I/O counts
            yield CounterMetricFamily(
                "smartpole_outbox_written_bytes",
                "Bytes the outbox sent to the storage device since the daemon started (SD card wear).",
                value=outbox.written_bytes,
            )
        uplink = s.uplink
        yield _family(
            CounterMetricFamily,
            "smartpole_uplink_batches",
            "Batch requests by result.",
            ["result"],
            [([r], n) for r, n in uplink.batches.items()],
        )
        yield GaugeMetricFamily(
            "smartpole_uplink_last_success_timestamp_seconds",
            "When the receiver last accepted a batch (0: never).",
            value=uplink.last_success or 0.0,
        )
        yield GaugeMetricFamily(
            "smartpole_uplink_backoff_seconds", "Current retry delay (0 when healthy).", value=uplink.backoff_s
        )
        if s.clock is not None and s.clock.skew_s is not None:
            yield GaugeMetricFamily(
                "smartpole_clock_skew_seconds",
                "The host clock minus GPS time, when GPS last checked it (positive: the host is ahead).",
                value=s.clock.skew_s,
            )
        sensors = s.sensors
        yield _family(
            CounterMetricFamily,
            "smartpole_sensor_readings",
            "Readings decoded per sensor.",
            ["sensor"],
            [([x.name], x.readings_total) for x in sensors],
        )
        yield _family(
            CounterMetricFamily,
            "smartpole_sensor_errors",
            "Bad input per sensor and kind.",
            ["sensor", "kind"],
            [([x.name, k], n) for x in sensors for k, n in x.errors.items()],
        )
        yield _family(
            CounterMetricFamily,
            "smartpole_redactions",
            "Regions redacted before encoding, by kind.",
            ["kind"],
            [([k], n) for k, n in s.redactions.items()],
        )


def _family(kind: type, name: str, doc: str, labels: list[str], samples: list[tuple[list[str], float]]) -> Metric:
    family = kind(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


class PoleMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.inference = Histogram(
            "smartpole_inference_seconds",
            "Inference time per model.",
            ["model"],
            buckets=INFERENCE_BUCKETS,
            registry=self.registry,
        )
        self.events = Counter(
            "smartpole_events_total", "Events committed to the outbox, by type.", ["type"], registry=self.registry
        )
        self._status = _StatusCollector()
        self.registry.register(self._status)

    def on_inference(self, model: str, seconds: float) -> None:
        """Thread-safe: called from the inference threads."""
        self.inference.labels(model).observe(seconds)

    def render(self, status: PoleStatus) -> bytes:
        self._status.status = status
        return generate_latest(self.registry)
