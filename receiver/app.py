"""The receiver's HTTP API (aiohttp).

Stateless: everything lives in the store and the media directory, so a city
runs as many replicas as it likes behind a load balancer on one PostgreSQL.
Bad input is always a 4xx with a JSON ``{"error": ...}`` naming what was wrong,
never a 5xx; a 503 means the database is unavailable and the pole should retry.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from receiver.auth import bearer, token_hash
from receiver.config import ReceiverSection
from receiver.metrics import ReceiverMetrics
from receiver.policy import PolicyConfig, refusal
from receiver.store import EventQuery, Store, StoreError, TokenInfo
from sync.protocol import (
    BATCHES_PATH,
    BatchReply,
    ErrorReply,
    ProtocolError,
    Rejection,
    is_sha256,
    parse_batch,
)

log = structlog.get_logger("receiver")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JPEG_MAGIC = b"\xff\xd8\xff"


def json_response(body: Any, status: int = 200) -> web.Response:
    if hasattr(body, "model_dump"):
        body = body.model_dump()
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error(status: int, message: str, rejected: list[Rejection] | None = None) -> web.Response:
    return json_response(ErrorReply(error=message, rejected=rejected or []), status)


class Receiver:
    """Handlers bound to one store, configuration and metrics registry."""

    def __init__(
        self, config: ReceiverSection, policy: PolicyConfig, store: Store, metrics: ReceiverMetrics | None = None
    ) -> None:
        self.config = config
        self.policy = policy
        self.store = store
        self.metrics = metrics or ReceiverMetrics()
        self.media_dir = Path(config.media_dir)

    def make_app(self, extra_middlewares: Iterable[Any] = ()) -> web.Application:
        """The aiohttp application. ``extra_middlewares`` run inside ours (tests use it to inject faults)."""
        app = web.Application(
            client_max_size=max(self.config.max_decompressed_bytes, self.config.max_media_bytes),
            middlewares=[self._errors, *extra_middlewares],
        )
        app.router.add_post(BATCHES_PATH, self.post_batch)
        app.router.add_put("/v1/media/{sha256}", self.put_media)
        app.router.add_get("/v1/media/{sha256}", self.get_media)
        app.router.add_get("/v1/events", self.get_events)
        app.router.add_get("/v1/poles", self.get_poles)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_page)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        started = time.perf_counter()
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return error(413, "request body too large")
        except web.HTTPException as exc:
            if exc.status >= 400:
                return error(exc.status, exc.reason)
            raise
        except StoreError as exc:
            log.error("store_unavailable", error=str(exc), path=request.path)
            return error(503, "database unavailable, retry later")
        finally:
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    async def _authenticate(self, request: web.Request, role: str) -> TokenInfo | web.Response:
        token = bearer(request)
        if token is None:
            return error(401, "missing bearer token")
        info = await self.store.lookup_token(token_hash(token))
        if info is None or info.revoked:
            return error(401, "unknown or revoked token")
        if info.role != role:
            return error(403, f"this token is for a {info.role}, not a {role}")
        return info

    # ------------------------------------------------------------------ poles write

    async def post_batch(self, request: web.Request) -> web.Response:
        auth = await self._authenticate(request, "pole")
        if isinstance(auth, web.Response):
            self.metrics.batches.labels("unauthorized" if auth.status == 401 else "forbidden").inc()
            return auth
        try:
            document = await self._read_document(request)
            envelope, events, invalid = parse_batch(document)
        except ProtocolError as exc:
            self.metrics.batches.labels("too_large" if exc.status == 413 else "invalid").inc()
            return error(exc.status, str(exc))
        if envelope.pole_id != auth.pole_id:
            self.metrics.batches.labels("forbidden").inc()
            return error(403, f"token belongs to pole {auth.pole_id!r}, not {envelope.pole_id!r}")
        if invalid:
            self.metrics.batches.labels("invalid").inc()
            return error(400, f"{len(invalid)} invalid event(s); nothing stored", invalid)

        now = time.time()
        refused: list[Rejection] = []
        storable = []
        for event in events:
            reason = refusal(event, self.policy, now)
            if reason is None:
                storable.append(event)
            else:
                refused.append(Rejection(id=event.id, reason=reason))
        status = envelope.status.model_dump(exclude_none=True) if envelope.status else None
        result = await self.store.insert_batch(envelope.pole_id, envelope.batch_id, storable, status, now)
        self.metrics.batches.labels("stored").inc()
        self.metrics.events.labels("accepted").inc(len(result.accepted))
        self.metrics.events.labels("duplicate").inc(len(result.duplicates))
        self.metrics.events.labels("rejected").inc(len(refused))
        if refused:
            log.warning("events_refused_by_policy", pole_id=envelope.pole_id, events=len(refused), first=refused[0].reason)
        return json_response(
            BatchReply(
                accepted=result.accepted,
                duplicates=result.duplicates,
                rejected=refused,
                missing_media=result.missing_media,
                config_version=self.config.config_version,
            )
        )

    async def _read_document(self, request: web.Request) -> bytes:
        """The batch JSON. aiohttp gunzips as it reads and stops at ``client_max_size``
        decompressed bytes, so a gzip bomb ends in a 413 rather than in memory."""
        ctype = request.content_type
        if ctype != "application/json":
            raise ProtocolError(415, f"content type must be application/json, not {ctype!r}")
        if request.content_length is not None and request.content_length > self.config.max_body_bytes:
            raise ProtocolError(413, f"body of {request.content_length} bytes; at most {self.config.max_body_bytes}")
        try:
            return await request.clone(client_max_size=self.config.max_decompressed_bytes).read()
        except web.HTTPRequestEntityTooLarge:
            raise ProtocolError(
                413, f"batch larger than {self.config.max_decompressed_bytes} bytes once decompressed"
            ) from None
        except (ContentEncodingError, RequestPayloadError, zlib.error) as exc:
            raise ProtocolError(400, f"body cannot be decoded ({request.headers.get('Content-Encoding', 'identity')}): {exc}") from None

    async def put_media(self, request: web.Request) -> web.Response:
        auth = await self._authenticate(request, "pole")
        if isinstance(auth, web.Response):
            return auth
        sha = request.match_info["sha256"]
        if not is_sha256(sha):
            return error(400, "media path must be a lowercase hex sha256")
        if request.content_type != "image/jpeg":
            return error(415, f"media must be image/jpeg, not {request.content_type!r}")
        try:
            body = await request.clone(client_max_size=self.config.max_media_bytes).read()
        except web.HTTPRequestEntityTooLarge:
            return error(413, f"media larger than {self.config.max_media_bytes} bytes")
        if not body.startswith(JPEG_MAGIC):
            return error(415, "body is not a JPEG")
        if hashlib.sha256(body).hexdigest() != sha:
            self.metrics.media.labels("hash_mismatch").inc()
            return error(400, "body does not match its sha256")
        path = self._media_path(sha)
        if not path.exists():
            _write_atomically(path, body)
        created = await self.store.add_media(sha, len(body), auth.pole_id or "", time.time())
        self.metrics.media.labels("stored" if created else "duplicate").inc()
        return json_response({"sha256": sha, "stored": created}, 201 if created else 200)

    def _media_path(self, sha: str) -> Path:
        return self.media_dir / sha[:2] / f"{sha}.jpg"

    # ------------------------------------------------------------------ readers

    async def get_media(self, request: web.Request) -> web.StreamResponse:
        auth = await self._authenticate(request, "reader")
        if isinstance(auth, web.Response):
            return auth
        sha = request.match_info["sha256"]
        if not is_sha256(sha):
            return error(400, "media path must be a lowercase hex sha256")
        path = self._media_path(sha)
        if not path.exists():
            return error(404, "no such media")
        return web.FileResponse(path, headers={"Content-Type": "image/jpeg"})

    async def get_events(self, request: web.Request) -> web.Response:
        auth = await self._authenticate(request, "reader")
        if isinstance(auth, web.Response):
            return auth
        q = request.query
        try:
            limit = int(q.get("limit", "100"))
            after = int(q.get("cursor", "0"))
            since = float(q["since"]) if "since" in q else None
            until = float(q["until"]) if "until" in q else None
        except ValueError as exc:
            return error(400, f"bad query parameter: {exc}")
        if not 1 <= limit <= self.config.events_page_max:
            return error(400, f"limit must be between 1 and {self.config.events_page_max}")
        page = await self.store.query_events(
            EventQuery(pole_id=q.get("pole"), type=q.get("type"), since=since, until=until, after=after, limit=limit)
        )
        return json_response({"events": page.events, "next_cursor": page.next_cursor})

    async def get_poles(self, request: web.Request) -> web.Response:
        auth = await self._authenticate(request, "reader")
        if isinstance(auth, web.Response):
            return auth
        now = time.time()
        window = self.config.online_window_s
        return json_response(
            {
                "poles": [
                    {
                        "pole_id": p.pole_id,
                        "last_seen": p.last_seen,
                        "online": p.last_seen is not None and now - p.last_seen <= window,
                        "max_seq": p.max_seq,
                        "events_total": p.events_total,
                        "status": p.status,
                    }
                    for p in await self.store.poles()
                ]
            }
        )

    # ------------------------------------------------------------------ operations

    async def health(self, request: web.Request) -> web.Response:
        try:
            await self.store.ping()
        except StoreError as exc:
            return json_response({"status": "unavailable", "database": str(exc)}, 503)
        return json_response({"status": "ok", "database": self.store.backend})

    async def metrics_page(self, request: web.Request) -> web.Response:
        try:
            self.metrics.poles_online.set(await self.store.count_online(time.time() - self.config.online_window_s))
        except StoreError:
            pass  # still serve the process metrics; the gauge keeps its last value
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _write_atomically(path: Path, data: bytes) -> None:
    """Write, fsync and rename, so a crash never leaves a partial JPEG under its hash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
