"""``/login`` and ``/logout``: the form, the password check (throttled), the session cookie."""

from __future__ import annotations

import asyncio

from aiohttp import web

from httpkit.throttle import retry_after
from receiver.dashboard.auth import COOKIE, DashboardAuth
from receiver.dashboard.render import Renderer, redirect, viewer_of
from receiver.metrics import ReceiverMetrics

FAILED_LOGIN_DELAY_S = 1.0  # while the attempt still holds its address's slot in the throttle
_MAX_FIELD = 1000


class LoginPage:
    def __init__(self, auth: DashboardAuth, render: Renderer, metrics: ReceiverMetrics) -> None:
        self.auth = auth
        self.render = render
        self.metrics = metrics

    async def page(self, request: web.Request) -> web.Response:
        if viewer_of(request) is not None:
            return redirect("/")
        return self.render.page(request, "login.html", message="", user="")

    async def log_in(self, request: web.Request) -> web.Response:
        form = await request.post()
        name = str(form.get("user", "")).strip()[:_MAX_FIELD]
        password = str(form.get("password", ""))[:_MAX_FIELD]
        client = self.auth.client(request)
        wait = self.auth.throttle.begin(client)
        if wait is not None:
            self.metrics.logins.labels("throttled").inc()
            seconds = retry_after(wait)
            page = self.render.page(
                request, "login.html", 429, message=f"Too many failed logins. Try again in {seconds} s.", user=name
            )
            page.headers["Retry-After"] = seconds
            return page
        try:
            user = await self.auth.check(name, password)
            if user is None:
                self.auth.throttle.failed(client)
                self.metrics.logins.labels("failure").inc()
                await asyncio.sleep(FAILED_LOGIN_DELAY_S)
                return self.render.page(request, "login.html", 401, message="Wrong user name or password.", user=name)
            self.auth.throttle.succeeded(client)
            self.metrics.logins.labels("success").inc()
        finally:
            self.auth.throttle.end(client)
        previous = viewer_of(request)
        if previous is not None:  # a new login replaces the browser's session, never adds to it
            await self.auth.end_session(previous)
        response = redirect("/")
        self.auth.set_cookie(request, response, await self.auth.start_session(user))
        return response

    async def log_out(self, request: web.Request) -> web.Response:
        viewer = viewer_of(request)
        if viewer is not None:
            await self.auth.end_session(viewer)
        response = redirect("/login")
        response.del_cookie(COOKIE, path="/")
        return response
