"""Headers every answer of both servers carries."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

SECURITY_HEADERS = {
    # A JPEG (or a JSON error) is never taken for a script or a page, whatever its bytes look like.
    "X-Content-Type-Options": "nosniff",
}


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if not response.prepared:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    return response
