"""Remote configuration: ``/v1/poles/{pole_id}/config`` and ``/v1/tags/{tag}/config``.

An admin ``PUT``s an overlay (JSON, or TOML with ``Content-Type: application/toml``):
a partial pole configuration, validated against the pole's own models
(:mod:`gateway.remote_config`), a 400 naming each bad key otherwise. It is stored
with its version, and the target version of every pole it reaches moves: the
version of the pole's effective overlay (its tags' overlays by tag name, then
its own). Every batch reply carries the pole's target version; a pole that is
behind fetches ``GET /v1/poles/{pole_id}/config`` with its own token (another
pole's token gets a 403), validates it again, applies it and reports the version
it runs in its status block.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from httpkit.errors import json_error, json_response
from receiver.auth import ADMINS, READERS, authenticate
from receiver.context import Context
from receiver.documents import BadRequest, pole_id_of, read_document, tag_of
from receiver.store.base import Overlay, Scope, TokenInfo
from sync.overlays import OverlayError, effective_overlay, overlay_version


def layer_view(layer: Overlay) -> dict[str, Any]:
    return {
        "scope": layer.scope,
        "name": layer.name,
        "version": layer.version,
        "overlay": layer.overlay,
        "updated_at": layer.updated_at,
        "updated_by": layer.updated_by,
    }


class RemoteConfig:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def get_pole(self, request: web.Request) -> web.Response:
        """The pole's effective overlay and its version; for the pole itself, readers and admins."""
        auth = await authenticate(request, self.ctx.store, "pole", *READERS, use=self.ctx.token_use)
        if isinstance(auth, web.Response):
            return auth
        try:
            pole_id = pole_id_of(request)
        except BadRequest as exc:
            return json_error(exc.status, str(exc))
        if auth.role == "pole" and auth.pole_id != pole_id:
            return json_error(403, f"this token is for pole {auth.pole_id!r}, not {pole_id!r}")
        pole = await self.ctx.store.get_pole(pole_id)
        if pole is None:
            return json_error(404, f"no pole {pole_id!r}")
        layers = await self.ctx.store.pole_overlays(pole_id)
        overlay = effective_overlay(layer.overlay for layer in layers)
        body: dict[str, Any] = {"pole_id": pole_id, "version": overlay_version(overlay), "overlay": overlay}
        if auth.role != "pole":
            body |= {
                "applied_version": pole.config_applied,
                "error": pole.config_error,
                "layers": [layer_view(layer) for layer in layers],
            }
        return json_response(body)

    async def put_pole(self, request: web.Request) -> web.Response:
        return await self._put(request, "pole")

    async def delete_pole(self, request: web.Request) -> web.Response:
        return await self._put(request, "pole", remove=True)

    async def get_tag(self, request: web.Request) -> web.Response:
        auth = await authenticate(request, self.ctx.store, *READERS, use=self.ctx.token_use)
        if isinstance(auth, web.Response):
            return auth
        try:
            tag = tag_of(request)
        except BadRequest as exc:
            return json_error(exc.status, str(exc))
        layer = await self.ctx.store.get_overlay("tag", tag)
        if layer is None:
            return json_error(404, f"tag {tag!r} has no configuration overlay")
        return json_response(layer_view(layer))

    async def put_tag(self, request: web.Request) -> web.Response:
        return await self._put(request, "tag")

    async def delete_tag(self, request: web.Request) -> web.Response:
        return await self._put(request, "tag", remove=True)

    async def _put(self, request: web.Request, scope: Scope, remove: bool = False) -> web.Response:
        """Store (or remove) the overlay of one pole or one tag; an empty overlay removes it too."""
        store = self.ctx.store
        auth = await authenticate(request, store, *ADMINS, use=self.ctx.token_use)
        if isinstance(auth, web.Response):
            return auth
        try:
            name = pole_id_of(request) if scope == "pole" else tag_of(request)
            overlay = None if remove else await asyncio.to_thread(validate, await read_document(request, toml=True))
        except BadRequest as exc:
            return json_error(exc.status, str(exc))
        except OverlayError as exc:
            return json_error(400, str(exc), problems=exc.problems)
        if scope == "pole" and await store.get_pole(name) is None:
            return json_error(404, f"no pole {name!r}")
        targets = await store.set_overlay(scope, name, overlay or None, time.time(), _who(auth))
        body: dict[str, Any] = {scope: name, "overlay": overlay or {}, "version": overlay_version(overlay or {})}
        if scope == "pole":
            body["target_version"] = targets.get(name)
        else:
            body["poles"] = targets
        return json_response(body)


def validate(doc: Any) -> dict[str, Any]:
    """The overlay ``doc`` checked against the pole's own models (:class:`OverlayError` naming each bad
    key). Called in a thread: the first call imports those models, and with them OpenCV and
    onnxruntime, which a receiver that is never sent an overlay does without."""
    from gateway.remote_config import validate_overlay

    return validate_overlay(doc)


def _who(auth: TokenInfo) -> str:
    return auth.name or auth.token_id
