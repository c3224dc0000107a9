"""The receiver's HTTP API (aiohttp): routing and the middleware every request passes.

Stateless: everything lives in the store and the media directory, so a city
runs as many replicas as it likes behind a load balancer on one PostgreSQL.
Bad input is always a 4xx with a JSON ``{"error": ...}`` naming what was wrong,
never a 5xx; a 503 means the database is unavailable and the pole should retry.
Each resource has its own module; this one only puts them on their routes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from httpkit.body import NO_AUTO_DECOMPRESS, Gunzip
from httpkit.errors import json_error, json_errors
from httpkit.headers import security_headers
from receiver import openapi
from receiver.analytics import Analytics
from receiver.auth import TokenCache, TokenUse
from receiver.batches import Batches
from receiver.config import DashboardSection, ReceiverSection
from receiver.context import Context
from receiver.dashboard.site import Dashboard
from receiver.events import Events
from receiver.media import Media
from receiver.mediastore.base import MediaStore
from receiver.mediastore.local import LocalMediaStore
from receiver.metrics import ReceiverMetrics
from receiver.operations import Operations
from receiver.poles import Poles
from receiver.policy import PolicyConfig, ReceiverPolicy
from receiver.remote import RemoteConfig
from receiver.store.base import Store, StoreError
from sync.protocol import BATCHES_PATH, MEDIA_PATH

log = structlog.get_logger("receiver")

LIVENESS_PATH = "/health"  # the process answers (orchestrators restart it when not)
READINESS_PATH = "/health/ready"  # it can take traffic: the database answers, the schema is current


class Receiver:
    """The receiver's resources bound to one store, configuration and metrics registry."""

    def __init__(
        self,
        config: ReceiverSection,
        policy: PolicyConfig,
        store: Store,
        metrics: ReceiverMetrics | None = None,
        media: MediaStore | None = None,
        dashboard: DashboardSection | None = None,
    ) -> None:
        """``media`` defaults to files under ``config.media_dir``; ``dashboard`` to its defaults (served)."""
        self.ctx = Context(
            config,
            policy,
            store,
            metrics or ReceiverMetrics(),
            Gunzip(config.max_concurrent_decompressions),
            TokenUse(),
            ReceiverPolicy(policy),
            media if media is not None else LocalMediaStore(config.media_dir),
            TokenCache(config.token_cache_s),
        )
        self.batches = Batches(self.ctx)
        self.media = Media(self.ctx)
        self.events = Events(self.ctx)
        self.poles = Poles(self.ctx)
        self.remote = RemoteConfig(self.ctx)
        self.operations = Operations(self.ctx)
        self.analytics = Analytics(self.ctx)
        settings = dashboard or DashboardSection()
        self.dashboard = Dashboard(self.ctx, settings) if settings.enabled else None

    def make_app(self, extra_middlewares: Iterable[Any] = ()) -> web.Application:
        """The aiohttp application. ``extra_middlewares`` run inside ours (tests use it to inject faults)."""
        config = self.ctx.config
        largest = max(config.max_body_bytes, config.max_media_bytes, config.max_clip_bytes)
        app = web.Application(
            client_max_size=largest,
            middlewares=[
                security_headers,
                self._observe,
                json_errors(largest),
                *([self.dashboard.middleware] if self.dashboard else []),
                *extra_middlewares,
            ],
            handler_args=NO_AUTO_DECOMPRESS,  # bodies are read and gunzipped by httpkit.body, bounded
        )
        app.router.add_post(BATCHES_PATH, self.batches.post)
        app.router.add_put(MEDIA_PATH, self.media.put)
        app.router.add_get(MEDIA_PATH, self.media.get)
        app.router.add_get("/v1/events", self.events.list)
        app.router.add_get("/v1/poles", self.poles.list)
        app.router.add_post("/v1/poles", self.poles.create)
        app.router.add_get("/v1/poles/{pole_id}", self.poles.get)
        app.router.add_patch("/v1/poles/{pole_id}", self.poles.update)
        app.router.add_delete("/v1/poles/{pole_id}", self.poles.revoke)
        app.router.add_post("/v1/poles/{pole_id}/revoke", self.poles.revoke)
        app.router.add_post("/v1/poles/{pole_id}/tokens", self.poles.add_token)
        app.router.add_get("/v1/poles/{pole_id}/config", self.remote.get_pole)
        app.router.add_put("/v1/poles/{pole_id}/config", self.remote.put_pole)
        app.router.add_delete("/v1/poles/{pole_id}/config", self.remote.delete_pole)
        app.router.add_get("/v1/tags/{tag}/config", self.remote.get_tag)
        app.router.add_put("/v1/tags/{tag}/config", self.remote.put_tag)
        app.router.add_delete("/v1/tags/{tag}/config", self.remote.delete_tag)
        app.router.add_get("/v1/analytics/counts", self.analytics.counts)
        app.router.add_get("/v1/analytics/last24h", self.analytics.last24h)
        app.router.add_get("/v1/analytics/traffic", self.analytics.traffic)
        app.router.add_get("/v1/analytics/air", self.analytics.air)
        app.router.add_get("/v1/analytics/speed", self.analytics.speed)
        app.router.add_get(LIVENESS_PATH, self.operations.health)
        app.router.add_get(READINESS_PATH, self.operations.ready)
        app.router.add_get("/metrics", self.operations.metrics)
        app.router.add_get("/openapi.json", openapi.serve)
        if self.dashboard is not None:
            self.dashboard.register(app)
        return app

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Time every request by route; a database outage becomes a 503 the pole retries."""
        resource = request.match_info.route.resource
        route = resource.canonical if resource else "unmatched"
        started = time.perf_counter()
        status = 500  # what aiohttp answers for an exception that gets past every middleware
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except StoreError as exc:
            log.error("store_unavailable", error=str(exc), path=request.path)
            status = 503
            return json_error(503, "database unavailable, retry later")
        finally:
            self.ctx.metrics.latency.labels(route).observe(time.perf_counter() - started)
            self.ctx.metrics.responses.labels(f"{status // 100}xx").inc()
