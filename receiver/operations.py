"""What operators and load balancers ask: liveness ``/health``, readiness ``/health/ready`` and
Prometheus ``/metrics``.

Liveness says only that the process serves: restarting a receiver cannot bring a database back,
so an outage must not make an orchestrator restart every replica. Readiness says whether this
replica can take batches now (the database answers and its schema is not older than this code);
a load balancer sends traffic only to ready replicas.
"""

from __future__ import annotations

import contextlib
import time

import structlog
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from httpkit.errors import json_response
from receiver.context import Context
from receiver.store.base import StoreError

log = structlog.get_logger("receiver")


class Operations:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def health(self, request: web.Request) -> web.Response:
        """Liveness: the event loop answers. Open to anyone, and never asks the database."""
        return json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        """Readiness. Open to anyone (load balancers): it says why not ready, but never the database's
        error (which names hosts, users and ports); the log has that."""
        try:
            problem = await self.ctx.store.schema_behind()
        except StoreError as exc:
            log.warning("health_database_unavailable", error=str(exc))
            problem = "database unreachable"
        if problem is not None:
            return json_response({"status": "unavailable", "error": problem}, 503)
        return json_response({"status": "ready", "database": self.ctx.store.backend})

    async def metrics(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        m = ctx.metrics
        # With the database down, still serve the process metrics; the gauges keep their last values.
        with contextlib.suppress(StoreError):
            fleet = await ctx.store.fleet_summary(time.time() - ctx.config.online_window_s)
            m.poles_online.set(fleet.online)
            m.poles.labels("online").set(fleet.online)
            m.poles.labels("offline").set(fleet.offline)
            m.poles.labels("revoked").set(fleet.revoked)
            m.worst_backlog.set(fleet.worst_backlog)
            m.worst_oldest_age.set(fleet.worst_oldest_age_s)
            m.worst_clock_skew.set(fleet.worst_clock_skew_s)
            m.config_behind.set(fleet.config_behind)
            m.config_errors.set(fleet.config_errors)
        pool = ctx.store.pool_stats()
        m.db_connections.labels("in_use").set(pool.in_use)
        m.db_connections.labels("idle").set(pool.idle)
        m.db_connections_max.set(pool.max_size)
        body = generate_latest(ctx.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
