"""The receiver's Prometheus metrics, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector


class ReceiverMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.batches = Counter(
            "smartpole_receiver_batches_total",
            "Batch requests by outcome (stored, invalid, unauthorized, forbidden, too_large, error).",
            ["result"],
            registry=self.registry,
        )
        self.events = Counter(
            "smartpole_receiver_events_total",
            "Events by outcome (accepted, duplicate, rejected).",
            ["outcome"],
            registry=self.registry,
        )
        self.media = Counter(
            "smartpole_receiver_media_total", "Media uploads by outcome.", ["result"], registry=self.registry
        )
        self.latency = Histogram(
            "smartpole_receiver_request_seconds",
            "Request handling time by route.",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.mqtt_messages = Counter(
            "smartpole_receiver_mqtt_messages_total",
            "MQTT messages handled by topic kind (batches, media) and the status of the reply.",
            ["kind", "status"],
            registry=self.registry,
        )
        self.mqtt_in_flight = Gauge(
            "smartpole_receiver_mqtt_in_flight",
            "MQTT messages taken from the broker and not yet acknowledged (the consumer's lag).",
            registry=self.registry,
        )
        self.poles_online = Gauge(
            "smartpole_receiver_poles_online", "Poles heard from within the online window.", registry=self.registry
        )
