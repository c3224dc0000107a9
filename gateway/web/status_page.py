"""The technicians' status page on the pole's local server: HTML, one JSON endpoint, three actions."""

from __future__ import annotations

import html
from pathlib import Path
from string import Template
from typing import Protocol

from aiohttp import web

from gateway.status import PoleStatus
from gateway.web.login import WebAuth
from gateway.web.status_view import Cell, build_view
from httpkit.errors import json_response

HERE = Path(__file__).resolve().parent
_PAGE = Template((HERE / "templates" / "status.html").read_text())
_LOGIN = Template((HERE / "templates" / "login.html").read_text())


class StatusSource(Protocol):
    """What the page needs from the daemon."""

    pole_id: str

    async def status(self) -> PoleStatus: ...

    def latest_snapshot(self) -> bytes | None: ...

    def thumbnail(self, event_id: str) -> bytes | None: ...

    def clip(self, event_id: str) -> bytes | None: ...

    def latest_clip_id(self) -> str | None: ...

    def record_clip(self) -> str: ...

    def sync_now(self) -> str: ...

    async def reload_config(self) -> tuple[bool, str]: ...


def _rows(rows: list[list[Cell]]) -> str:
    out = []
    for row in rows:
        cells = []
        for value in row:
            if isinstance(value, dict):
                cells.append(f'<td><img class="thumb" alt="redacted snapshot" src="{html.escape(value["img"])}"></td>')
            else:
                cells.append(f"<td>{html.escape(value)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out)


class StatusPage:
    def __init__(self, source: StatusSource, auth: WebAuth) -> None:
        self.source = source
        self.auth = auth
        auth.login_page = self._login_html

    def register(self, app: web.Application) -> None:
        app.router.add_get("/", self.page)
        app.router.add_get("/login", self.login_page)
        app.router.add_post("/login", self.auth.login)
        app.router.add_post("/logout", self.auth.logout)
        app.router.add_get("/status.json", self.status_json)
        app.router.add_get("/snapshot.jpg", self.snapshot)
        app.router.add_get("/thumbs/{event_id}.jpg", self.thumb)
        app.router.add_get("/clips/{event_id}.mp4", self.clip)
        app.router.add_post("/actions/sync-now", self.sync_now)
        app.router.add_post("/actions/record-clip", self.record_clip)
        app.router.add_post("/actions/reload-config", self.reload_config)
        app.router.add_static("/static/", HERE / "static")

    async def page(self, request: web.Request) -> web.Response:
        view = build_view(await self.source.status())
        values = {k: html.escape(v) for k, v in view["text"].items()}
        values.update({k: _rows(v) for k, v in view["tables"].items()})
        values.update({f"{k}_class": v for k, v in view["states"].items()})
        values["snapshot"] = html.escape(view["images"]["snapshot"])
        values["csrf_token"] = html.escape(self.auth.csrf_token(request))
        clip_id = self.source.latest_clip_id()
        values["clip"] = (
            f'<video class="clip" controls preload="metadata" src="/clips/{html.escape(clip_id)}.mp4"></video>'
            if clip_id
            else "no clip yet"
        )
        return web.Response(text=_PAGE.substitute(values), content_type="text/html")

    def _login_html(self, error: str) -> str:
        message = f'<p class="error">{html.escape(error)}</p>' if error else ""
        return _LOGIN.substitute(pole_id=html.escape(self.source.pole_id), message=message)

    async def login_page(self, request: web.Request) -> web.Response:
        if self.auth.password_hash is None:
            error = "No technician password is configured on this pole (http.password_hash)."
        elif "failed" in request.query:
            error = "Wrong password."
        else:
            error = ""
        return web.Response(text=self._login_html(error), content_type="text/html")

    async def status_json(self, request: web.Request) -> web.Response:
        status = await self.source.status()
        return json_response({"status": status.as_dict(), "view": build_view(status)})

    async def snapshot(self, request: web.Request) -> web.Response:
        jpeg = self.source.latest_snapshot()
        if jpeg is None:
            return json_response({"error": "no snapshot yet"}, 404)
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def thumb(self, request: web.Request) -> web.Response:
        jpeg = self.source.thumbnail(request.match_info["event_id"])
        if jpeg is None:
            return json_response({"error": "no picture for that event"}, 404)
        return web.Response(body=jpeg, content_type="image/jpeg")

    async def clip(self, request: web.Request) -> web.Response:
        mp4 = self.source.clip(request.match_info["event_id"])
        if mp4 is None:
            return json_response({"error": "no clip for that event"}, 404)
        return web.Response(body=mp4, content_type="video/mp4")

    async def record_clip(self, request: web.Request) -> web.Response:
        return json_response({"message": self.source.record_clip()})

    async def sync_now(self, request: web.Request) -> web.Response:
        return json_response({"message": self.source.sync_now()})

    async def reload_config(self, request: web.Request) -> web.Response:
        ok, message = await self.source.reload_config()
        return json_response({"message": message} if ok else {"error": message}, 200 if ok else 400)
