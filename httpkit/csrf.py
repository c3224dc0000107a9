"""Cross-site request forgery: what keeps another page from acting with a logged-in user's cookie.

``SameSite=Strict`` is not enough: browsers count another port on the same host (or another
host of the same registrable domain) as the same *site*, and send the cookie with its forms.
So every request that changes something (not GET, HEAD or OPTIONS) must

1. come from the server's own origin: a ``Sec-Fetch-Site`` header other than ``same-origin``
   or ``none`` (the user typed it), or an ``Origin`` whose host and port are not the request's
   ``Host``, is refused. Clients that send neither (scripts, curl) pass this check;
2. and, once a session exists, carry that session's token: the ``X-CSRF-Token`` header (for
   scripts on the page) or the ``csrf_token`` form field (for plain forms). The token is an
   HMAC of the session id under a key of the process, so nothing is stored and a token is
   good for its session only.

The login form has no session yet: it gets the origin check (no login CSRF), not the token.
Pages put :meth:`CsrfGuard.token` in a ``<meta name="csrf-token">`` and in every form.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from aiohttp import web

HEADER = "X-CSRF-Token"
FORM_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


def cross_origin(request: web.Request) -> str | None:
    """Why the request comes from another origin than the server's, or None if it does not (or cannot tell)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = request.headers.get("Origin")
    if origin is not None:
        if origin == "null":
            return "cross-site request refused (Origin: null)"
        netloc = urlsplit(origin).netloc.lower()
        if not netloc or netloc != (request.host or "").lower():
            return "cross-site request refused (Origin is not this server)"
    return None


class CsrfGuard:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def token(self, session: str) -> str:
        digest = hmac.new(self._key, session.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    async def refusal(self, request: web.Request, session: str | None) -> str | None:
        """Why ``request`` must be refused (answer 403), or None. ``session`` is the session id the
        request authenticates with, None before login."""
        if request.method in SAFE_METHODS:
            return None
        reason = cross_origin(request)
        if reason is not None or session is None:
            return reason
        presented = request.headers.get(HEADER)
        if presented is None and request.content_type in _FORMS:
            presented = str((await request.post()).get(FORM_FIELD, ""))
        if not presented:
            return "missing CSRF token: reload the page"
        if not hmac.compare_digest(presented.encode(), self.token(session).encode()):
            return "wrong CSRF token: reload the page"
        return None
