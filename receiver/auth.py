"""Bearer tokens: generated once, shown once, stored only as sha256 hashes (``token_hash``); and checking them."""

from __future__ import annotations

import secrets

from aiohttp import web

from httpkit.errors import json_error
from receiver.store.base import Store, TokenInfo
from sync.protocol import token_hash

TOKEN_PREFIX = "spt_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def bearer(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if well formed."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def authenticate(request: web.Request, store: Store, role: str) -> TokenInfo | web.Response:
    """The request's token if it is valid and has ``role``; else the 401 or 403 to answer."""
    token = bearer(request)
    if token is None:
        return json_error(401, "missing bearer token")
    info = await store.lookup_token(token_hash(token))
    if info is None or info.revoked:
        return json_error(401, "unknown or revoked token")
    if info.role != role:
        return json_error(403, f"this token is for a {info.role}, not a {role}")
    return info
