"""The dashboard's routes and the guard every one of them passes.

Each route has an access level: ``open`` (the login form, static files), ``reader`` (any
logged-in user) or ``admin``. Before a handler runs, the guard finds the session, refuses a
form from another origin or without the session's CSRF token (403), sends a visitor without a
session to the login page (or answers 401 to a POST), and answers 403 to a reader posting an
admin's form. Every answer gets the Content-Security-Policy and its companions.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import AbstractRoute

from receiver.config import DashboardSection
from receiver.context import Context
from receiver.dashboard.admin import AdminForms
from receiver.dashboard.auth import VIEWER, DashboardAuth
from receiver.dashboard.charts import ChartsPage
from receiver.dashboard.fleet import FleetPage
from receiver.dashboard.login import LoginPage
from receiver.dashboard.media import MediaProxy
from receiver.dashboard.pole import PolePage
from receiver.dashboard.render import PAGE_HEADERS, STATIC, Renderer, redirect
from receiver.dashboard.tag import TagPage

Access = Literal["open", "reader", "admin"]
MAX_FORM_BYTES = 256_000


class Dashboard:
    def __init__(self, ctx: Context, config: DashboardSection) -> None:
        self.auth = DashboardAuth(ctx.store, config)
        self.render = Renderer(self.auth)
        self.login = LoginPage(self.auth, self.render, ctx.metrics)
        self.fleet = FleetPage(ctx, self.render)
        self.pole = PolePage(ctx, self.render)
        self.tag = TagPage(ctx, self.render)
        self.admin = AdminForms(ctx, self.render, self.fleet, self.pole, self.tag)
        self.media = MediaProxy(ctx, self.render)
        self.charts = ChartsPage(ctx, self.render)
        self._access: dict[AbstractRoute, Access] = {}

    def register(self, app: web.Application) -> None:
        add = self._add
        add(app, "GET", "/login", self.login.page, "open")
        add(app, "POST", "/login", self.login.log_in, "open")
        add(app, "POST", "/logout", self.login.log_out, "open")  # it ends the session, if there is one
        add(app, "GET", "/", self.fleet.page, "reader")
        add(app, "GET", "/poles/{pole_id}", self.pole.page, "reader")
        add(app, "GET", "/tags/{tag}", self.tag.page, "reader")
        add(app, "GET", "/charts", self.charts.page, "reader")
        add(app, "GET", "/media/{sha256}", self.media.get, "reader")
        add(app, "POST", "/poles", self.admin.register, "admin")
        add(app, "POST", "/poles/{pole_id}/revoke", self.admin.revoke, "admin")
        add(app, "POST", "/poles/{pole_id}/config", self.admin.configure, "admin")
        add(app, "POST", "/tags/{tag}/config", self.admin.configure_tag, "admin")
        for route in app.router.add_static("/static/", STATIC):
            self._access[route] = "open"
        app.on_cleanup.append(self._close)

    def _add(self, app: web.Application, method: str, path: str, handler: Handler, access: Access) -> None:
        self._access[app.router.add_route(method, path, handler)] = access

    def routes(self) -> set[tuple[str, str]]:
        """(method, path) of every route the dashboard serves (the API's description leaves them out)."""
        return {(route.method, route.resource.canonical) for route in self._access if route.resource is not None}

    async def _close(self, app: web.Application) -> None:
        self.auth.close()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        access = self._access.get(request.match_info.route)
        if access is None:
            return await handler(request)
        response = await self._guard(request, handler, access)
        if not response.prepared:
            response.headers.update(PAGE_HEADERS)
        return response

    async def _guard(self, request: web.Request, handler: Handler, access: Access) -> web.StreamResponse:
        viewer = await self.auth.viewer(request)
        request[VIEWER] = viewer
        if request.method == "POST":
            if request.content_length is None:
                return self.render.error(request, 411, "A form must say its length.")
            if request.content_length > MAX_FORM_BYTES:
                return self.render.error(request, 413, f"A form is at most {MAX_FORM_BYTES} bytes.")
        # The login form is the one form without a session's token (a stale tab may hold it while
        # logged in): it gets the origin check alone, which is what keeps another site from logging
        # the browser in to an account of its choosing.
        token_of = None if request.path == "/login" or viewer is None else viewer.session
        refusal = await self.auth.csrf.refusal(request, token_of)
        if refusal is not None:
            return self.render.error(request, 403, refusal)
        if access == "open":
            return await handler(request)
        if viewer is None:
            if request.method in ("GET", "HEAD"):
                return redirect("/login")
            return self.render.error(request, 401, "Log in first.")
        if access == "admin" and not viewer.admin:
            return self.render.error(request, 403, "Only an admin may do this.")
        return await handler(request)
