"""The receiver's configuration file: strict models, a description on every field."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from receiver.policy import PolicyConfig


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
    online_window_s: float = Field(300.0, gt=0, description="A pole seen within this many seconds counts as online.")
    events_page_max: int = Field(1000, ge=1, description="Most events one GET /v1/events page returns.")
    config_version: str = Field(
        "1", min_length=1, max_length=64, description="Config version reported to poles in every batch reply."
    )
    pool_size: int = Field(8, ge=1, le=64, description="PostgreSQL connections per receiver process.")


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
    logging: ReceiverLogging = Field(default_factory=ReceiverLogging, description="Log level and format.")
