"""Bearer tokens: generated once, shown once, stored only as sha256 hashes; and checking them.

Each token has a public id (the first 12 hex digits of its hash), shown by ``list-tokens``
and used by ``revoke-token``; the secret itself is never shown again. A token has one role;
a route names the roles it admits, so a role that may do more (an admin) is one more name
in those lists, not another check:

- ``pole``: writes its own pole's batches and media, and reads its own remote configuration;
- ``reader``: reads events, media, poles, analytics (``READERS``);
- ``admin``: all a reader does, plus registering, revoking and configuring poles (``ADMINS``).

A token without the role a route needs gets a 403; an unknown or revoked one a 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

import structlog
from aiohttp import web

from httpkit.errors import json_error
from receiver.store.base import ROLES, Store, TokenInfo
from sync.protocol import token_hash

log = structlog.get_logger("receiver")

TOKEN_PREFIX = "spt_"
READERS = ("reader", "admin")  # every route that reads admits these
ADMINS = ("admin",)

__all__ = ["ADMINS", "READERS", "ROLES", "TokenCache", "TokenUse", "authenticate", "bearer", "new_token", "token_hash"]


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def bearer(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if well formed."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class TokenUse:
    """Records when each token was last used, with at most one write per token per ``interval_s``
    from this process (a pole sending a batch a second costs one write a minute, not sixty)."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._written: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def seen(self, store: Store, info: TokenInfo) -> None:
        now = time.monotonic()
        last = self._written.get(info.token_id)
        if last is not None and now - last < self.interval_s:
            return
        self._written[info.token_id] = now
        task = asyncio.create_task(self._write(store, info.token_id, time.time()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, store: Store, token_id: str, when: float) -> None:
        try:
            await store.touch_token(token_id, when)
        except Exception as exc:  # the request itself was served (and the store may be closing): try next time
            self._written.pop(token_id, None)
            log.warning("token_use_not_recorded", token_id=token_id, error=str(exc))

    async def settled(self) -> None:
        """Until the writes under way are done (tests, shutdown)."""
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks)


class TokenCache:
    """Known tokens for a few seconds, so a pole sending batch after batch costs no lookup each time.

    Only found tokens are kept (an unknown one is asked for every time, so a flood of made-up
    tokens cannot fill memory, and a new pole's token works at once); a revocation takes effect
    within ``ttl_s``, from every process. ``ttl_s`` 0 asks the database every time."""

    MAX_ENTRIES = 100_000  # past this the cache starts afresh: the working set of a city is smaller

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._known: dict[str, tuple[float, TokenInfo]] = {}

    async def lookup(self, store: Store, digest: str) -> TokenInfo | None:
        now = time.monotonic()
        cached = self._known.get(digest)
        if cached is not None and now < cached[0]:
            return cached[1]
        info = await store.lookup_token(digest)
        if info is not None and self.ttl_s > 0:
            if len(self._known) >= self.MAX_ENTRIES:
                self._known.clear()
            self._known[digest] = (now + self.ttl_s, info)
        return info

    def forget(self) -> None:
        """After a revocation through this process: it takes effect here at once."""
        self._known.clear()


async def authenticate(
    request: web.Request, store: Store, *roles: str, use: TokenUse | None = None, cache: TokenCache | None = None
) -> TokenInfo | web.Response:
    """The request's token if it is valid and has one of ``roles``; else the 401 or 403 to answer.
    With ``cache``, a token looked up within its TTL is not asked for again. A database that cannot
    be asked raises ``StoreError`` (answered 503)."""
    token = bearer(request)
    if token is None:
        return json_error(401, "missing bearer token")
    digest = token_hash(token)
    info = await (cache.lookup(store, digest) if cache is not None else store.lookup_token(digest))
    if info is None or info.revoked:
        return json_error(401, "unknown or revoked token")
    if info.role not in roles:
        return json_error(403, f"this token is for a {info.role}, not a {' or '.join(roles)}")
    if use is not None:
        use.seen(store, info)
    return info
