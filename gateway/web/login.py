"""Who may use the pole's local web server.

Technicians log in with a password whose scrypt hash is in the config
(``smartpole hash-password`` makes one) and get a session cookie; programs on
the pole use ``Authorization: Bearer <ingest token>``. Only ``/healthz``,
``/metrics``, the login page and static files are open.

Every request that changes something must come from the page's own origin and,
once logged in, carry the session's CSRF token (:mod:`httpkit.csrf`).

Guessing is bounded (:mod:`httpkit.throttle`): one attempt at a time per client
address, a back-off doubling from 2 s after three failures in a row, and at most
30 failed logins a minute from all addresses; beyond that a 429 with
``Retry-After``. The password is checked in a thread of its own
(:mod:`httpkit.passwords`), never on the event loop the ingest API shares.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from httpkit.csrf import CsrfGuard
from httpkit.errors import json_error
from httpkit.passwords import PasswordChecker, hash_password, is_password_hash, verify_password
from httpkit.throttle import LoginThrottle, retry_after

__all__ = ["SESSION_COOKIE", "Sessions", "WebAuth", "hash_password", "is_password_hash", "verify_password"]

SESSION_COOKIE = "smartpole_session"
OPEN_PATHS = ("/healthz", "/metrics", "/login", "/static/")
FAILED_LOGIN_DELAY_S = 1.0


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

    def __init__(
        self,
        password_hash: str | None,
        ingest_token: str | None,
        session_hours: float,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.password_hash = password_hash
        self.ingest_token = ingest_token
        self.sessions = Sessions(session_hours * 3600)
        self.throttle = throttle or LoginThrottle()
        self.checker = PasswordChecker(max_concurrent=1)
        self.csrf = CsrfGuard()
        # How a refused login is shown: the login page with this message (set by the status page).
        self.login_page: Callable[[str], str] = lambda message: message

    def close(self) -> None:
        self.checker.close()

    def session(self, request: web.Request) -> str | None:
        """The request's valid session id, if it has one."""
        token = request.cookies.get(SESSION_COOKIE)
        return token if self.sessions.valid(token) else None

    def logged_in(self, request: web.Request) -> bool:
        return self.session(request) is not None

    def csrf_token(self, request: web.Request) -> str:
        """The token the page of this request's session puts in its forms and scripts."""
        session = self.session(request)
        return self.csrf.token(session) if session is not None else ""

    def _bearer_ok(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return (
            self.ingest_token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(value.strip().encode(), self.ingest_token.encode())
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        session = self.session(request)
        if session is not None or request.path.startswith(OPEN_PATHS):
            refusal = await self.csrf.refusal(request, session)
            if refusal is not None:
                return json_error(403, refusal)
            return await handler(request)
        if request.path == "/v1/events" and self._bearer_ok(request):
            return await handler(request)
        if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
            raise web.HTTPFound("/login")
        return web.json_response({"error": "login or bearer token required"}, status=401)

    async def login(self, request: web.Request) -> web.StreamResponse:
        client = request.remote or "unknown"
        wait = self.throttle.begin(client)
        if wait is not None:
            seconds = retry_after(wait)
            return web.Response(
                status=429,
                text=self.login_page(f"Too many failed logins. Try again in {seconds} s."),
                content_type="text/html",
                headers={"Retry-After": seconds},
            )
        try:
            form = await request.post()
            password = str(form.get("password", ""))
            if self.password_hash is None or not await self.checker.verify(password, self.password_hash):
                self.throttle.failed(client)
                await asyncio.sleep(FAILED_LOGIN_DELAY_S)
                raise web.HTTPFound("/login?failed=1")
            self.throttle.succeeded(client)
        finally:
            self.throttle.end(client)
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
