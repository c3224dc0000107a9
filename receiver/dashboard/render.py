"""Pages from Jinja2 templates, every value escaped (autoescape): nothing a pole or an admin sends
becomes markup. Pages carry no inline script or style, so the Content-Security-Policy forbids both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from receiver.dashboard.auth import VIEWER, DashboardAuth, Viewer
from receiver.dashboard.formats import FILTERS

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"

# On every dashboard answer. Inline SVG is markup, not script: the charts and the map need nothing more.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters.update(FILTERS)


def viewer_of(request: web.Request) -> Viewer | None:
    return request.get(VIEWER)


class Renderer:
    def __init__(self, auth: DashboardAuth) -> None:
        self.auth = auth

    def page(self, request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
        viewer = viewer_of(request)
        text = _ENV.get_template(template).render(
            viewer=viewer, csrf_token=self.auth.csrf_token(viewer), path=request.path, **values
        )
        return web.Response(text=text, status=status, content_type="text/html", headers={"Cache-Control": "no-store"})

    def error(self, request: web.Request, status: int, message: str, **headers: str) -> web.Response:
        response = self.page(request, "error.html", status, status_code=status, message=message)
        response.headers.update(headers)
        return response


def redirect(location: str) -> web.Response:
    """A 303 See Other: after a form, the browser GETs ``location``."""
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})
