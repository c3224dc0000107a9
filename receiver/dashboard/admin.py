"""The admins' forms: register a pole (its token shown once), revoke one, set a pole's or a tag's overlay.

They do what ``POST /v1/poles``, ``POST /v1/poles/{id}/revoke`` and ``PUT /v1/poles/{id}/config``
do, with the same checks; a refusal comes back on the page, next to the form, naming the field
or the dotted configuration key. Only admins reach these handlers (:mod:`receiver.dashboard.site`).
"""

from __future__ import annotations

import asyncio
import re
import time
import tomllib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from receiver.context import Context
from receiver.dashboard.fleet import FleetPage
from receiver.dashboard.pole import PolePage
from receiver.dashboard.render import Renderer, redirect, viewer_of
from receiver.dashboard.tag import TagPage
from receiver.documents import BadRequest, parse_model, pole_id_of, tag_of
from receiver.poles import NewPole, register, revoke_pole
from receiver.remote import validate
from receiver.store.base import Scope
from sync.overlays import OverlayError, overlay_version

_SHOWN = 200  # characters of a refused registration's fields shown back in the form
# A page that shows an overlay form: (request, pole id or tag, status, the text typed, its problems).
Shows = Callable[[web.Request, str, int, str | None, list[str] | None], Awaitable[web.Response]]


def _number(form: dict[str, str], key: str) -> float | str | None:
    """A form's number as a float, the text itself if it is not one (the model then names the field), or None."""
    text = form.get(key, "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def new_pole_document(form: dict[str, str]) -> dict[str, Any]:
    """The ``POST /v1/poles`` document a registration form stands for."""
    doc: dict[str, Any] = {"pole_id": form.get("pole_id", "").strip()}
    if form.get("name", "").strip():
        doc["name"] = form["name"].strip()
    lat, lon = _number(form, "lat"), _number(form, "lon")
    if lat is not None or lon is not None:
        doc["location"] = {"lat": lat, "lon": lon}
    doc["tags"] = [t for t in re.split(r"[,\s]+", form.get("tags", "")) if t]
    return doc


def parse_overlay_text(text: str) -> Any:
    """An overlay typed into the form: JSON (it starts with ``{``) or TOML; empty text removes the overlay."""
    stripped = text.strip()
    if not stripped:
        return None
    if stripped.startswith("{"):
        try:
            return orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            raise OverlayError([f"(overlay): not valid JSON: {exc}"]) from None
    try:
        return tomllib.loads(stripped)
    except tomllib.TOMLDecodeError as exc:
        raise OverlayError([f"(overlay): not valid TOML (or JSON starting with '{{'): {exc}"]) from None


class AdminForms:
    def __init__(self, ctx: Context, render: Renderer, fleet: FleetPage, pole: PolePage, tag: TagPage) -> None:
        self.ctx = ctx
        self.render = render
        self.fleet = fleet
        self.pole = pole
        self.tag = tag

    async def _form(self, request: web.Request) -> dict[str, str]:
        """The form's text fields (its size is bounded by the guard, ``MAX_FORM_BYTES``)."""
        return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}

    async def register(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        shown = {k: form.get(k, "")[:_SHOWN] for k in ("pole_id", "name", "lat", "lon", "tags")}
        try:
            new = parse_model(NewPole, new_pole_document(form))
        except BadRequest as exc:
            return await self.fleet.show(request, 400, str(exc), shown)
        registered = await register(self.ctx, new)
        if registered is None:
            return await self.fleet.show(request, 409, f"pole {new.pole_id!r} exists already", shown)
        pole, token = registered
        return self.render.page(request, "registered.html", 201, pole=pole, token=token)

    async def revoke(self, request: web.Request) -> web.Response:
        try:
            pole_id = pole_id_of(request)
        except BadRequest as exc:
            return self.render.error(request, exc.status, str(exc))
        if await self.ctx.store.get_pole(pole_id) is None:
            return self.render.error(request, 404, f"No pole {pole_id!r}.")
        await revoke_pole(self.ctx, pole_id)
        return redirect(f"/poles/{pole_id}")

    async def configure(self, request: web.Request) -> web.Response:
        """A pole's own overlay."""
        try:
            pole_id = pole_id_of(request)
        except BadRequest as exc:
            return self.render.error(request, exc.status, str(exc))
        if await self.ctx.store.get_pole(pole_id) is None:
            return self.render.error(request, 404, f"No pole {pole_id!r}.")
        return await self._set(request, "pole", pole_id, self.pole.show, f"/poles/{pole_id}")

    async def configure_tag(self, request: web.Request) -> web.Response:
        """A tag's overlay: every pole carrying the tag, now or later."""
        try:
            tag = tag_of(request)
        except BadRequest as exc:
            return self.render.error(request, exc.status, str(exc))
        return await self._set(request, "tag", tag, self.tag.show, f"/tags/{tag}")

    async def _set(self, request: web.Request, scope: Scope, name: str, page: Shows, back: str) -> web.Response:
        """Validate the overlay typed into the form and store it; its problems back on the page, by dotted key."""
        text = (await self._form(request)).get("overlay", "")
        try:
            doc = parse_overlay_text(text)
            overlay = None if doc is None else await asyncio.to_thread(validate, doc)
        except OverlayError as exc:
            return await page(request, name, 400, text, exc.problems)
        viewer = viewer_of(request)
        await self.ctx.store.set_overlay(scope, name, overlay or None, time.time(), viewer.user if viewer else None)
        return redirect(f"{back}?saved={overlay_version(overlay or {})}")
