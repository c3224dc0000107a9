"""The fleet registry: ``/v1/poles`` and ``/v1/poles/{pole_id}``.

Readers (and admins) list and read poles; admins register them (``POST``, which
answers the pole's token, once), change their name, location and tags
(``PATCH``), give them another token, and revoke them (``DELETE`` or
``POST .../revoke``: every token of the pole is revoked; its events and history
stay, and it is listed as revoked). JSON shapes are in :func:`pole_view` and
README.md (City platform: fleet, roles, remote configuration, policy).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from httpkit.errors import json_error, json_response
from receiver.auth import ADMINS, READERS, authenticate, new_token
from receiver.context import Context
from receiver.documents import BadRequest, flag, parse_model, pole_id_of, read_document
from receiver.store.base import TAG_PATTERN, PoleChanges, PoleQuery, PoleState, token_id_of
from sync.protocol import POLE_ID_PATTERN, token_hash

PAGE_MAX = 1000
_TAG = re.compile(TAG_PATTERN)
_POLE_ID = re.compile(POLE_ID_PATTERN)
Tag = Annotated[str, StringConstraints(pattern=TAG_PATTERN)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]*$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocationIn(Strict):
    lat: float = Field(..., ge=-90, le=90)
    lon: float = Field(..., ge=-180, le=180)


class NewPole(Strict):
    """``POST /v1/poles``."""

    pole_id: Annotated[str, StringConstraints(pattern=POLE_ID_PATTERN)]
    name: Name | None = None
    location: LocationIn | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=64)


class PoleUpdate(Strict):
    """``PATCH /v1/poles/{id}``: only the keys given change; null clears a name or location."""

    name: Name | None = None
    location: LocationIn | None = None
    tags: list[Tag] | None = Field(None, max_length=64)


def pole_view(pole: PoleState, now: float, online_window_s: float) -> dict[str, Any]:
    """A pole as the API answers it (``GET /v1/poles``, ``GET /v1/poles/{id}``...)."""
    return {
        "pole_id": pole.pole_id,
        "name": pole.name,
        "location": None if pole.lat is None or pole.lon is None else {"lat": pole.lat, "lon": pole.lon},
        "tags": pole.tags,
        "created_at": pole.created_at,
        "first_seen": pole.first_seen,
        "last_seen": pole.last_seen,
        "online": pole.online(now, online_window_s),
        "revoked": pole.revoked_at is not None,
        "revoked_at": pole.revoked_at,
        "max_seq": pole.max_seq,
        "events_total": pole.events_total,
        "config": {
            "target_version": pole.config_target,
            "applied_version": pole.config_applied,
            "in_sync": pole.config_applied == pole.config_target,
            "error": pole.config_error,
        },
        "status": pole.status,
    }


def _limit(text: str | None) -> int:
    if text is None:
        return 100
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(400, f"limit: not an integer: {text[:40]!r}") from None
    if not 1 <= value <= PAGE_MAX:
        raise BadRequest(400, f"limit: must be between 1 and {PAGE_MAX}")
    return value


def parse_pole_query(query: Mapping[str, str], online_since: float) -> PoleQuery:
    """The filters of ``GET /v1/poles``: ``tag``, ``online``, ``revoked``, ``limit``, ``cursor``."""
    tag = query.get("tag")
    if tag is not None and not _TAG.match(tag):
        raise BadRequest(400, "tag: letters, digits, . _ : - (at most 64)")
    cursor = query.get("cursor")
    if cursor is not None and not _POLE_ID.match(cursor):
        raise BadRequest(400, "cursor: not a pole id (the next_cursor of a previous page)")
    return PoleQuery(
        tag=tag,
        online=flag(query, "online"),
        online_since=online_since,
        revoked=flag(query, "revoked"),
        after=cursor,
        limit=_limit(query.get("limit")),
    )


async def register(ctx: Context, new: NewPole) -> tuple[PoleState, str] | None:
    """Register ``new`` with a fresh token: the pole and its token (to be shown once), or None if it exists."""
    token = new_token()
    location = new.location
    created = await ctx.store.register_pole(
        new.pole_id,
        token_hash(token),
        time.time(),
        new.name,
        location.lat if location else None,
        location.lon if location else None,
        new.tags,
    )
    if not created:
        return None
    pole = await ctx.store.get_pole(new.pole_id)
    assert pole is not None
    return pole, token


async def revoke_pole(ctx: Context, pole_id: str) -> int:
    """Revoke every token of ``pole_id`` (its history stays); how many were still valid. This
    process's token cache forgets them at once; other receivers' within ``token_cache_s``."""
    revoked = await ctx.store.revoke_pole(pole_id)
    ctx.pole_tokens.forget()
    return revoked


class Poles:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def view(self, pole: PoleState) -> dict[str, Any]:
        return pole_view(pole, time.time(), self.ctx.config.online_window_s)

    async def _auth(self, request: web.Request, roles: tuple[str, ...]) -> web.Response | None:
        auth = await authenticate(request, self.ctx.store, *roles, use=self.ctx.token_use)
        return auth if isinstance(auth, web.Response) else None

    async def _known_pole(
        self, request: web.Request, roles: tuple[str, ...], hint: str = ""
    ) -> PoleState | web.Response:
        """The registered pole the path names, for a caller of one of ``roles``; else the answer to give."""
        if (refused := await self._auth(request, roles)) is not None:
            return refused
        try:
            pole_id = pole_id_of(request)
        except BadRequest as exc:
            return json_error(exc.status, str(exc))
        pole = await self.ctx.store.get_pole(pole_id)
        if pole is None:
            return json_error(404, f"no pole {pole_id!r}{hint}")
        return pole

    async def list(self, request: web.Request) -> web.Response:
        if (refused := await self._auth(request, READERS)) is not None:
            return refused
        try:
            query = parse_pole_query(request.query, time.time() - self.ctx.config.online_window_s)
        except BadRequest as exc:
            return json_error(exc.status, str(exc))
        page = await self.ctx.store.list_poles(query)
        return json_response({"poles": [self.view(p) for p in page.poles], "next_cursor": page.next_cursor})

    async def get(self, request: web.Request) -> web.Response:
        pole = await self._known_pole(request, READERS)
        return pole if isinstance(pole, web.Response) else json_response(self.view(pole))

    async def create(self, request: web.Request) -> web.Response:
        if (refused := await self._auth(request, ADMINS)) is not None:
            return refused
        try:
            new = parse_model(NewPole, await read_document(request))
        except BadRequest as exc:
            return json_error(exc.status, str(exc))
        registered = await register(self.ctx, new)
        if registered is None:
            return json_error(
                409, f"pole {new.pole_id!r} exists; POST /v1/poles/{new.pole_id}/tokens gives it another token"
            )
        pole, token = registered
        return json_response({"pole": self.view(pole), "token": token, "token_id": token_id_of(token_hash(token))}, 201)

    async def update(self, request: web.Request) -> web.Response:
        if (refused := await self._auth(request, ADMINS)) is not None:
            return refused
        try:
            pole_id = pole_id_of(request)
            update = parse_model(PoleUpdate, await read_document(request))
        except BadRequest as exc:
            return json_error(exc.status, str(exc))
        given = update.model_fields_set
        fields: dict[str, Any] = {}
        if "name" in given:
            fields["name"] = update.name
        if "location" in given:
            fields["lat"] = update.location.lat if update.location else None
            fields["lon"] = update.location.lon if update.location else None
        if "tags" in given and update.tags is None:
            return json_error(400, "tags: a list of tags ([] for none), not null")
        pole = await self.ctx.store.update_pole(pole_id, PoleChanges(fields, update.tags))
        if pole is None:
            return json_error(404, f"no pole {pole_id!r}")
        return json_response(self.view(pole))

    async def revoke(self, request: web.Request) -> web.Response:
        known = await self._known_pole(request, ADMINS)
        if isinstance(known, web.Response):
            return known
        store, pole_id = self.ctx.store, known.pole_id
        revoked = await revoke_pole(self.ctx, pole_id)
        pole = await store.get_pole(pole_id)
        assert pole is not None
        return json_response({"pole": self.view(pole), "tokens_revoked": revoked})

    async def add_token(self, request: web.Request) -> web.Response:
        """Another token for a registered pole (a revoked pole becomes active again)."""
        known = await self._known_pole(request, ADMINS, "; register it with POST /v1/poles")
        if isinstance(known, web.Response):
            return known
        store, pole_id = self.ctx.store, known.pole_id
        token = new_token()
        await store.add_token(token_hash(token), "pole", pole_id, None)
        return json_response({"pole_id": pole_id, "token": token, "token_id": token_id_of(token_hash(token))}, 201)
