"""Who may use the pole's local web server.

Technicians log in with a password whose scrypt hash is in the config
(``smartpole hash-password`` makes one) and get a session cookie; programs on
the pole use ``Authorization: Bearer <ingest token>``. Only ``/healthz``,
``/metrics``, the login page and static files are open.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

SESSION_COOKIE = "smartpole_session"
OPEN_PATHS = ("/healthz", "/metrics", "/login", "/static/")

_N, _R, _P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def is_password_hash(encoded: str) -> bool:
    parts = encoded.split("$")
    return len(parts) == 6 and parts[0] == "scrypt"


class Sessions:
    """Random session tokens held in memory: a restart logs everyone out, which is fine on a pole."""

    def __init__(self, lifetime_s: float) -> None:
        self.lifetime_s = lifetime_s
        self._expiry: dict[str, float] = {}

    def create(self) -> str:
        now = time.monotonic()
        self._expiry = {t: e for t, e in self._expiry.items() if e > now}
        token = secrets.token_urlsafe(32)
        self._expiry[token] = now + self.lifetime_s
        return token

    def valid(self, token: str | None) -> bool:
        return token is not None and self._expiry.get(token, 0.0) > time.monotonic()

    def end(self, token: str | None) -> None:
        if token is not None:
            self._expiry.pop(token, None)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebAuth:
    """The login check for every route, as an aiohttp middleware, plus the login and logout handlers."""

    def __init__(self, password_hash: str | None, ingest_token: str | None, session_hours: float) -> None:
        self.password_hash = password_hash
        self.ingest_token = ingest_token
        self.sessions = Sessions(session_hours * 3600)

    def logged_in(self, request: web.Request) -> bool:
        return self.sessions.valid(request.cookies.get(SESSION_COOKIE))

    def _bearer_ok(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return (
            self.ingest_token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(value.strip().encode(), self.ingest_token.encode())
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(OPEN_PATHS) or self.logged_in(request):
            return await handler(request)
        if request.path == "/v1/events" and self._bearer_ok(request):
            return await handler(request)
        if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
            raise web.HTTPFound("/login")
        return web.json_response({"error": "login or bearer token required"}, status=401)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        password = str(form.get("password", ""))
        if self.password_hash is None or not verify_password(password, self.password_hash):
            await asyncio.sleep(1.0)  # slows guessing down; the pole has no account lockout
            raise web.HTTPFound("/login?failed=1")
        response = web.HTTPFound("/")
        response.set_cookie(
            SESSION_COOKIE,
            self.sessions.create(),
            httponly=True,
            samesite="Strict",
            max_age=int(self.sessions.lifetime_s),
            path="/",
        )
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.end(request.cookies.get(SESSION_COOKIE))
        response = web.HTTPFound("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response
