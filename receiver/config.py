"""The receiver's configuration file: strict models, a description on every field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from receiver.policy import PolicyConfig
from sync.protocol import EVENT_TYPE_PATTERN
from sync.transport import insecure_url_problem


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReceiverSection(Strict):
    """The HTTP service and its store."""

    bind: str = Field("127.0.0.1", description="Address to listen on; 0.0.0.0 behind a load balancer.")
    port: int = Field(8480, ge=0, le=65535, description="TCP port (0 picks a free one, for tests).")
    database_url: SecretStr = Field(
        SecretStr("sqlite:///var/receiver/receiver.db"),
        description="sqlite:///PATH (pilot) or postgresql://USER@HOST/DB (city); may carry a password, "
        "so SMARTPOLE_RECEIVER_DATABASE_URL overrides it.",
    )
    media_dir: Path = Field(Path("var/receiver/media"), description="Directory for redacted JPEGs, by sha256.")
    max_body_bytes: int = Field(8_000_000, gt=0, description="Largest batch body on the wire (gzip-compressed).")
    max_decompressed_bytes: int = Field(
        64_000_000, gt=0, description="Largest batch once gunzipped; reading stops there, so a gzip bomb gets a 413."
    )
    max_concurrent_decompressions: int = Field(
        2,
        ge=1,
        le=64,
        description="Batches gunzipped at once (the others wait): with max_decompressed_bytes, "
        "the bound on memory for inflated bodies.",
    )
    max_media_bytes: int = Field(4_000_000, gt=0, description="Largest JPEG accepted by PUT /v1/media.")
    max_clip_bytes: int = Field(32_000_000, gt=0, description="Largest MP4 clip accepted by PUT /v1/media.")
    online_window_s: float = Field(300.0, gt=0, description="A pole seen within this many seconds counts as online.")
    events_page_max: int = Field(1000, ge=1, description="Most events one GET /v1/events page returns.")
    pool_size: int = Field(8, ge=1, le=64, description="PostgreSQL connections per receiver process.")
    analytics_max_days: int = Field(
        400, ge=1, le=3660, description="Longest window (since to until) an analytics query may ask for, in days."
    )
    analytics_max_rows: int = Field(
        50_000,
        ge=1,
        description="Most rows an analytics answer per pole and hour may hold; a wider question gets a 400 "
        "asking for fewer hours or a pole or tag.",
    )
    token_cache_s: float = Field(
        5.0,
        ge=0,
        le=60,
        description="How long a process keeps a pole token it looked up, for batches and media (one lookup "
        "less per request); a revoked pole can still send for this long. 0: look up every request.",
    )
    shutdown_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="On SIGTERM, how long requests and MQTT messages in hand may take to finish before they "
        "are cut (the pole sends again what got no answer); keep it below the orchestrator's grace period.",
    )


class MqttSection(Strict):
    """The MQTT consumer: batches and media that poles publish through a broker."""

    enabled: bool = Field(False, description="Consume poles' batches from the broker beside the HTTP API.")
    allow_insecure: bool = Field(
        False, description="Allow an mqtt:// url to a host other than this machine (no TLS); the log then warns."
    )
    url: str = Field(
        "mqtt://127.0.0.1:1883",
        description="The broker: mqtts://HOST[:PORT] (TLS), or mqtt://HOST[:PORT] to this machine (or with "
        "allow_insecure).",
    )
    username: str = Field("receiver", min_length=1, description="The receivers' broker account (see the ACL).")
    password: SecretStr | None = Field(None, description="Its password; SMARTPOLE_MQTT_PASSWORD overrides it.")
    ca_file: Path | None = Field(None, description="CA certificate (PEM) of the broker; default: the system's CAs.")
    cert_file: Path | None = Field(None, description="Client certificate (PEM), when the broker asks for one.")
    key_file: Path | None = Field(None, description="Private key (PEM) of the client certificate.")
    group: str = Field(
        "smartpole-receivers",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="Shared-subscription group: receivers in one group split the poles' messages between them.",
    )
    client_id: str | None = Field(
        None,
        max_length=64,
        description="This receiver's client id, stable across restarts so its persistent session (and the "
        "messages waiting in it) is found again; default: 'smartpole-receiver-<host name>'. Unique per process.",
    )
    session_expiry_s: int = Field(
        60,
        ge=0,
        description="How long the broker keeps this receiver's session while it is down. Messages wait in it for "
        "the receiver to come back (restart it with the same client_id); meanwhile Mosquitto still routes this "
        "receiver's share of new messages there, and poles resend what gets no reply, so a receiver that is gone "
        "for good slows delivery until its session expires. Poles resend anyway: nothing is lost either way.",
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive interval.")
    max_in_flight: int = Field(
        32, ge=1, le=1000, description="Messages taken from the broker and not yet acknowledged (handled concurrently)."
    )
    max_message_bytes: int = Field(
        16_000_000, gt=0, description="Largest batch once gunzipped, or media file; larger is refused with a 413 reply."
    )

    @field_validator("url")
    @classmethod
    def _tls_unless_allowed(cls, url: str, info: ValidationInfo) -> str:
        problem = insecure_url_problem(url, secure=("mqtts",), plain=("mqtt",))
        if problem is not None and not (info.data.get("allow_insecure") and url.lower().startswith("mqtt://")):
            raise ValueError(problem)
        return url

    def insecure_warning(self) -> str | None:
        return insecure_url_problem(self.url, secure=("mqtts",), plain=("mqtt",))


class S3Section(Strict):
    """S3-compatible object storage for media (``[media.s3]``)."""

    bucket: str = Field(
        "smartpole-media", min_length=3, max_length=63, description="The bucket; it must exist already."
    )
    endpoint_url: str | None = Field(
        None, description="The S3 endpoint (MinIO, Ceph, another region); default: AWS's for the region."
    )
    region: str | None = Field(None, description="The region; default: botocore's (AWS_REGION, a profile).")
    access_key_id: str | None = Field(
        None, description="Access key id; default: botocore's chain (AWS_ACCESS_KEY_ID, a profile, a role)."
    )
    secret_access_key: SecretStr | None = Field(
        None,
        description="Its secret; SMARTPOLE_MEDIA_S3_SECRET_ACCESS_KEY overrides it, and when both this and the "
        "id are unset botocore's chain (AWS_SECRET_ACCESS_KEY...) is used.",
    )
    prefix: str = Field("media/", max_length=200, description="Key prefix: objects are <prefix>ab/cd/<sha256>.jpg.")
    serve: Literal["stream", "redirect"] = Field(
        "stream",
        description="How readers get a file: streamed through the receiver, or redirected (302) to a presigned URL.",
    )
    presign_s: int = Field(300, ge=10, le=86_400, description="Lifetime of a presigned URL (serve = 'redirect').")
    timeout_s: float = Field(10.0, gt=0, le=120, description="Connect and read timeout of each S3 request.")


class MediaSection(Strict):
    """Where redacted JPEGs and clips are kept."""

    store: Literal["local", "s3"] = Field(
        "local", description="'local': files under receiver.media_dir (one host); 's3': object storage (any number)."
    )
    s3: S3Section = Field(default_factory=S3Section, description="Object storage settings for store = 's3'.")


class DashboardSection(Strict):
    """The operators' dashboard at ``/``: logins, sessions and how the receiver is reached."""

    enabled: bool = Field(True, description="Serve the dashboard (and its login) at / beside the API.")
    session_hours: float = Field(8.0, gt=0, le=168, description="How long an operator stays logged in.")
    trust_forwarded: bool = Field(
        False,
        description="Behind a reverse proxy that terminates TLS: trust its X-Forwarded-Proto (https makes the "
        "session cookie Secure) and X-Forwarded-For (the address login throttling counts). Only when every "
        "request comes through that proxy.",
    )
    login_free_failures: int = Field(
        3,
        ge=1,
        le=100,
        description="Failed logins in a row from one address before its back-off starts (2 s, doubling).",
    )
    login_failures_per_minute: int = Field(
        30, ge=1, description="Failed logins a minute from all addresses together; beyond, every login gets a 429."
    )


class RetentionSection(Strict):
    """How long events (and their media) are kept, and the upkeep of the event partitions (``[retention]``)."""

    default_days: int = Field(
        0, ge=0, le=36_500, description="Days an event is kept, for every type not in retention.types; 0 keeps forever."
    )
    types: dict[str, int] = Field(
        default_factory=dict,
        description="Days kept per event type, overriding default_days (e.g. telemetry = 30); 0 keeps that type "
        "forever.",
    )
    delete_media: bool = Field(
        True,
        description="Delete the media files of expired events from the media store, once no remaining event "
        "refers to them.",
    )
    maintenance_interval_s: float = Field(
        3600.0,
        gt=0,
        description="Each receiver runs maintenance (partitions ahead, and retention unless retention_in_receiver "
        "is false) at start and then this often; one process at a time across receivers.",
    )
    retention_in_receiver: bool = Field(
        True,
        description="Receivers apply retention in their maintenance; false leaves it to a cron job running "
        "'smartpole receiver maintain' (receivers still create partitions ahead).",
    )
    partition_days: int = Field(
        1, ge=1, le=31, description="PostgreSQL: days of event time per partition of the events table (new ones)."
    )
    partitions_ahead_days: int = Field(
        7, ge=1, le=366, description="PostgreSQL: partitions are kept created this many days ahead of now."
    )
    lock_timeout_s: float = Field(
        2.0,
        gt=0,
        le=60,
        description="PostgreSQL: how long maintenance waits for a table lock (attaching or dropping a partition) "
        "before it gives up on that step until the next run, so ingest never queues behind it for long.",
    )

    @field_validator("types")
    @classmethod
    def _type_names(cls, types: dict[str, int]) -> dict[str, int]:
        for name, days in types.items():
            if not re.match(EVENT_TYPE_PATTERN, name):
                raise ValueError(f"{name!r} is not an event type (lowercase letters, digits and _)")
            if not 0 <= days <= 36_500:
                raise ValueError(f"{name}: days must be between 0 (forever) and 36500")
        return types


class ReceiverLogging(Strict):
    """Log output."""

    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level written.")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="'json', 'console', or 'auto' (JSON under systemd or when not on a terminal)."
    )


class ReceiverConfig(Strict):
    """The whole receiver configuration file."""

    receiver: ReceiverSection = Field(default_factory=ReceiverSection, description="Service and storage.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="What the receiver refuses to store.")
    mqtt: MqttSection = Field(default_factory=MqttSection, description="Batches from poles through an MQTT broker.")
    media: MediaSection = Field(default_factory=MediaSection, description="Where media is kept: a directory or S3.")
    dashboard: DashboardSection = Field(
        default_factory=DashboardSection, description="The operators' dashboard: logins and sessions."
    )
    retention: RetentionSection = Field(
        default_factory=RetentionSection, description="Retention of events and media, and partition upkeep."
    )
    logging: ReceiverLogging = Field(default_factory=ReceiverLogging, description="Log level and format.")
