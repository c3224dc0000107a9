"""Every refusal as a JSON body ``{"error": "..."}``, never aiohttp's plain-text pages.

Programs on both sides (the uplink, the ingest clients, the dashboard's scripts)
read the reason from the body; a text/plain 413 or 404 would leave them guessing.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """``body`` (plain data or a pydantic model) as a JSON response."""
    if hasattr(body, "model_dump"):
        body = body.model_dump()
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return json_response({"error": message, **extra}, status)


def json_errors(max_body_bytes: int) -> Middleware:
    """A middleware turning aiohttp's HTTP errors (404, 405, 413...) into JSON error bodies."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return json_error(413, f"request body larger than {max_body_bytes} bytes")
        except web.HTTPException as exc:
            if exc.status >= 400:
                return json_error(exc.status, exc.reason)
            raise

    return middleware
