"""Who is using the dashboard: human users with passwords, and their sessions in the database.

A user (``smartpole receiver add-user``) has a role, ``reader`` or ``admin``, and an scrypt
password hash (:mod:`httpkit.passwords`, as on the pole). Logging in creates a random session
id, sent once as an HttpOnly, SameSite=Strict cookie (Secure over TLS, or behind a proxy that
says ``X-Forwarded-Proto: https`` when ``dashboard.trust_forwarded``); the database keeps only
its sha256 and expiry, so any receiver process serves any session and logging out deletes it.

Forms carry a CSRF token (:mod:`httpkit.csrf`): an HMAC of the session id. The HMAC key is a
constant rather than a secret of the process because replicas behind a load balancer must agree
on it; what makes the token unguessable is the session id, which only the user's browser holds.

Guessing is bounded per process by :class:`httpkit.throttle.LoginThrottle`, and a password is
checked off the event loop; an unknown user name costs the same check as a wrong password.
"""

from __future__ import annotations

import functools
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from httpkit.csrf import CsrfGuard
from httpkit.passwords import PasswordChecker, hash_password
from httpkit.throttle import LoginThrottle
from receiver.config import DashboardSection
from receiver.store.base import Store, User
from sync.protocol import token_hash

COOKIE = "smartpole_dashboard"
_CSRF_KEY = b"smartpole dashboard csrf v1"
_MAX_SESSION_ID = 128  # ours are 43 characters; anything longer is not worth a database lookup


@dataclass(frozen=True, slots=True)
class Viewer:
    """The logged-in user of a request."""

    user: str
    role: str
    session: str  # the session id from the cookie: the CSRF token is derived from it

    @property
    def admin(self) -> bool:
        return self.role == "admin"


# Set by the dashboard's guard on every page request: None when no session.
VIEWER: web.RequestKey[Viewer | None] = web.RequestKey("viewer", Viewer)  # type: ignore[arg-type]


@functools.cache
def _decoy_hash() -> str:
    """A hash no password matches, checked for unknown user names so that they take as long as a wrong password."""
    return hash_password(secrets.token_urlsafe(32))


class DashboardAuth:
    def __init__(self, store: Store, config: DashboardSection) -> None:
        self.store = store
        self.config = config
        self.csrf = CsrfGuard(_CSRF_KEY)
        self.checker = PasswordChecker(max_concurrent=1)
        self.throttle = LoginThrottle(
            free_failures=config.login_free_failures, global_failures=config.login_failures_per_minute
        )

    def close(self) -> None:
        self.checker.close()

    async def viewer(self, request: web.Request) -> Viewer | None:
        """The request's user, if its cookie names a live session."""
        session = request.cookies.get(COOKIE)
        if not session or len(session) > _MAX_SESSION_ID:
            return None
        found = await self.store.lookup_session(token_hash(session), time.time())
        return None if found is None else Viewer(found.user, found.role, session)

    async def check(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs (tens of milliseconds in a thread), else None."""
        user = await self.store.get_user(name) if name else None
        matches = await self.checker.verify(password, user.password_hash if user else _decoy_hash())
        return user if matches and user is not None else None

    async def start_session(self, user: User) -> str:
        session = secrets.token_urlsafe(32)
        now = time.time()
        await self.store.add_session(token_hash(session), user.name, now, now + self.config.session_hours * 3600)
        return session

    async def end_session(self, viewer: Viewer) -> None:
        await self.store.delete_session(token_hash(viewer.session))

    def set_cookie(self, request: web.Request, response: web.StreamResponse, session: str) -> None:
        response.set_cookie(
            COOKIE,
            session,
            httponly=True,
            samesite="Strict",
            secure=self.secure(request),
            max_age=int(self.config.session_hours * 3600),
            path="/",
        )

    def secure(self, request: web.Request) -> bool:
        """Whether the browser reached us over TLS (directly, or through the trusted proxy)."""
        if request.secure:
            return True
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return self.config.trust_forwarded and proto == "https"

    def client(self, request: web.Request) -> str:
        """The address login throttling counts: the proxy's last ``X-Forwarded-For`` entry when trusted
        (the address the proxy itself saw; earlier entries are whatever the client claimed)."""
        forwarded = request.headers.get("X-Forwarded-For", "")
        if self.config.trust_forwarded and forwarded.strip():
            return forwarded.split(",")[-1].strip()[:64]
        return request.remote or "unknown"

    def csrf_token(self, viewer: Viewer | None) -> str:
        return self.csrf.token(viewer.session) if viewer is not None else ""
