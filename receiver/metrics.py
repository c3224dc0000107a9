"""The receiver's Prometheus metrics, on a registry of its own.

Ingest: batches by result, events by outcome, rejected events by reason, fields the receiver's
policy redacted, ingest latency by transport, HTTP responses by status class, the MQTT consumer's
messages in hand against its limit; maintenance runs and what retention removed. Fleet and database
pool gauges are set when ``/metrics`` is scraped (``receiver/operations.py``): one query over the
poles, and the pool's own counts.
"""

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
        self.mqtt_in_flight_max = Gauge(
            "smartpole_receiver_mqtt_in_flight_max",
            "Most MQTT messages the consumer takes at once (mqtt.max_in_flight): in_flight stuck there means "
            "messages wait in the broker, the consumer falling behind.",
            registry=self.registry,
        )
        self.mqtt_connected = Gauge(
            "smartpole_receiver_mqtt_connected",
            "1 while the MQTT consumer holds a session with the broker (absent when MQTT is off).",
            registry=self.registry,
        )
        self.responses = Counter(
            "smartpole_receiver_http_responses_total",
            "HTTP responses by status class (2xx, 3xx, 4xx, 5xx); 5xx are the receiver's own failures "
            "(503: the database is unavailable).",
            ["code"],
            registry=self.registry,
        )
        self.poles_online = Gauge(
            "smartpole_receiver_poles_online", "Poles heard from within the online window.", registry=self.registry
        )
        self.rejected = Counter(
            "smartpole_receiver_events_rejected_total",
            "Events refused for good, by reason (invalid, type, future, plate_text, database).",
            ["reason"],
            registry=self.registry,
        )
        self.redacted = Counter(
            "smartpole_receiver_fields_redacted_total",
            "Event fields the receiver's policy dropped or hashed before storing.",
            registry=self.registry,
        )
        self.ingest_latency = Histogram(
            "smartpole_receiver_ingest_seconds",
            "Time to validate, filter and store one decoded batch, by transport (http, mqtt).",
            ["transport"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.poles = Gauge(
            "smartpole_receiver_poles",
            "Registered poles by state: online (heard from within online_window_s), offline, revoked.",
            ["state"],
            registry=self.registry,
        )
        self.worst_backlog = Gauge(
            "smartpole_receiver_fleet_worst_backlog_events",
            "The largest outbox backlog an active pole reported.",
            registry=self.registry,
        )
        self.worst_oldest_age = Gauge(
            "smartpole_receiver_fleet_worst_oldest_age_seconds",
            "The age of the oldest unsent event any active pole reported.",
            registry=self.registry,
        )
        self.worst_clock_skew = Gauge(
            "smartpole_receiver_fleet_worst_clock_skew_seconds",
            "The largest clock difference to GPS time (either way) an active pole reported.",
            registry=self.registry,
        )
        self.config_behind = Gauge(
            "smartpole_receiver_poles_config_behind",
            "Active poles whose applied configuration version is not their target.",
            registry=self.registry,
        )
        self.config_errors = Gauge(
            "smartpole_receiver_poles_config_errors",
            "Active poles reporting an error applying their remote configuration.",
            registry=self.registry,
        )
        self.db_connections = Gauge(
            "smartpole_receiver_db_connections",
            "Database connections of this process by state (in_use, idle).",
            ["state"],
            registry=self.registry,
        )
        self.logins = Counter(
            "smartpole_receiver_dashboard_logins_total",
            "Dashboard logins by result (success, failure, throttled).",
            ["result"],
            registry=self.registry,
        )
        self.db_connections_max = Gauge(
            "smartpole_receiver_db_connections_max",
            "Most database connections this process opens (pool_size; 2 on SQLite: a writer and a reader).",
            registry=self.registry,
        )
        self.maintenance_runs = Counter(
            "smartpole_receiver_maintenance_runs_total",
            "Maintenance runs of this process by outcome: done, skipped (another process was maintaining), failed.",
            ["outcome"],
            registry=self.registry,
        )
        self.maintenance_last_done = Gauge(
            "smartpole_receiver_maintenance_last_done_timestamp_seconds",
            "When this process last finished a maintenance run (partitions ahead, retention).",
            registry=self.registry,
        )
        self.retention_events = Counter(
            "smartpole_receiver_retention_events_total",
            "Expired events removed by this process, by how: dropped (with their partition) or trimmed.",
            ["how"],
            registry=self.registry,
        )
        self.retention_media = Counter(
            "smartpole_receiver_retention_media_deleted_total",
            "Media files of expired events this process deleted (no remaining event referred to them).",
            registry=self.registry,
        )
