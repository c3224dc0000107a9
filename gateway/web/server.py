"""The pole's local HTTP server, shared by the ingest API, the status page and the metrics."""

from __future__ import annotations

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from httpkit.body import NO_AUTO_DECOMPRESS
from httpkit.errors import json_errors
from httpkit.headers import security_headers
from httpkit.passwords import is_password_hash

log = structlog.get_logger("http")


class HttpConfig(BaseModel):
    """The local HTTP server (ingest API and status page)."""

    model_config = ConfigDict(extra="forbid")

    bind: str = Field(
        "127.0.0.1", description="Address to listen on; keep it local unless the status page must be reachable."
    )
    port: int = Field(8470, ge=0, le=65535, description="TCP port (0 picks a free one).")
    max_body_bytes: int = Field(1_000_000, gt=0, description="Largest request body.")
    max_events_per_request: int = Field(1000, ge=1, description="Most events in one POST /v1/events.")
    password_hash: SecretStr | None = Field(
        None,
        description="scrypt hash of the technicians' password from 'smartpole hash-password'; "
        "without it nobody can log in. SMARTPOLE_HTTP_PASSWORD_HASH overrides it.",
    )
    ingest_token: SecretStr | None = Field(
        None,
        description="Bearer token for programs posting to /v1/events (at least 16 characters); "
        "SMARTPOLE_HTTP_INGEST_TOKEN overrides it.",
    )
    session_hours: float = Field(8.0, gt=0, le=168, description="How long a technician stays logged in.")
    login_free_failures: int = Field(
        3,
        ge=1,
        le=100,
        description="Failed logins in a row from one address before its back-off starts (2 s, doubling).",
    )
    login_failures_per_minute: int = Field(
        30, ge=1, description="Failed logins a minute from all addresses together; beyond, every login gets a 429."
    )
    max_future_s: float = Field(
        86_400.0, gt=0, description="POST /v1/events refuses a ts further than this many seconds in the future."
    )
    max_past_s: float = Field(
        30 * 86_400.0,
        gt=0,
        description="POST /v1/events refuses a ts further than this many seconds in the past "
        "(default: the longest outbox TTL).",
    )

    @field_validator("password_hash")
    @classmethod
    def _looks_like_a_hash(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not is_password_hash(value.get_secret_value()):
            raise ValueError("not a password hash; make one with 'smartpole hash-password'")
        return value

    @field_validator("ingest_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value


class LocalServer:
    """Owns the aiohttp runner; routes are added to ``app`` before ``start``."""

    def __init__(self, config: HttpConfig, auth: Middleware | None = None) -> None:
        """``auth`` guards every route (see gateway.web.login); tests may leave it out."""
        self.config = config
        middlewares: list[Middleware] = [security_headers, json_errors(config.max_body_bytes)]
        if auth is not None:
            middlewares.append(auth)
        # No automatic gunzip: nothing here takes compressed bodies (see httpkit.body).
        self.app = web.Application(
            client_max_size=config.max_body_bytes, middlewares=middlewares, handler_args=NO_AUTO_DECOMPRESS
        )
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.bind, self.config.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("http_listening", bind=self.config.bind, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
