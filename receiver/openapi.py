"""The receiver's API description, served at ``GET /openapi.json`` (OpenAPI 3.1).

Written by hand, next to the handlers it describes; the request bodies that have a pydantic
model take its JSON Schema, so the two cannot drift apart. tests/test_openapi.py checks that
every route of the app is described here and nothing else is, and runs schemathesis against
a live receiver: an operation added without its description fails there.

The dashboard's HTML pages (:mod:`receiver.dashboard`) are not part of the API and not here.
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from httpkit.errors import json_response
from receiver.poles import PAGE_MAX, NewPole, PoleUpdate
from receiver.store.analytics import BY_VALUES
from receiver.store.base import TAG_PATTERN
from sync.protocol import EVENT_TYPE_PATTERN, POLE_ID_PATTERN, SHA256_PATTERN, UUID_PATTERN, BatchReply

Json = dict[str, Any]

_ERRORS = {
    400: "Bad input: the error names what was wrong",
    401: "No token, or an unknown or revoked one",
    403: "The token's role may not do this",
    404: "No such resource",
    409: "It exists already",
    411: "The body must say its length",
    413: "The body is too large",
    415: "Wrong content type or encoding",
    503: "The database or media store is unavailable: retry later",
}


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Json) -> Json:
    return {"anyOf": [schema, {"type": "null"}]}


def _json(schema: Json, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Json]:
    return {str(code): _json(_ref("Error"), _ERRORS[code]) for code in (*codes, 503)}


def _auth(*codes: int) -> dict[str, Json]:
    """The refusals of a route behind a token, plus ``codes``."""
    return _errors(401, 403, *codes)


def _param(name: str, where: str, schema: Json, description: str, required: bool = False) -> Json:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "schema": schema,
        "description": description,
    }


_POLE_ID = _param("pole_id", "path", {"type": "string", "pattern": POLE_ID_PATTERN}, "The pole's id.")
_TAG = _param("tag", "path", {"type": "string", "pattern": TAG_PATTERN}, "A tag.")
_SHA = _param("sha256", "path", {"type": "string", "pattern": SHA256_PATTERN}, "The file's sha256, lowercase hex.")
_FLAG = {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]}
_NUMBER = {"type": "number"}
_TEXT = {"type": "string"}


def _model(model: type[BaseModel], components: Json) -> Json:
    """``model``'s JSON Schema, its nested models moved into ``components`` (OpenAPI 3.1 is JSON Schema 2020-12)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return _ref(model.__name__)


def _schemas() -> Json:
    components: Json = {}
    _model(NewPole, components)
    _model(PoleUpdate, components)
    _model(BatchReply, components)
    location = {
        "type": "object",
        "required": ["lat", "lon"],
        "properties": {"lat": _NUMBER, "lon": _NUMBER, "source": _nullable(_TEXT)},
    }
    components |= {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": _TEXT},
            "description": "Every refusal; some carry more (the problems of an overlay, the rejected events).",
        },
        "Pole": {
            "type": "object",
            "required": ["pole_id", "tags", "online", "revoked", "config", "max_seq", "events_total"],
            "properties": {
                "pole_id": _TEXT,
                "name": _nullable(_TEXT),
                "location": _nullable(location),
                "tags": {"type": "array", "items": _TEXT},
                "created_at": _nullable(_NUMBER),
                "first_seen": _nullable(_NUMBER),
                "last_seen": _nullable(_NUMBER),
                "online": {"type": "boolean"},
                "revoked": {"type": "boolean"},
                "revoked_at": _nullable(_NUMBER),
                "max_seq": {"type": "integer"},
                "events_total": {"type": "integer"},
                "config": {
                    "type": "object",
                    "required": ["target_version", "applied_version", "in_sync", "error"],
                    "properties": {
                        "target_version": _TEXT,
                        "applied_version": _nullable(_TEXT),
                        "in_sync": {"type": "boolean"},
                        "error": _nullable(_TEXT),
                    },
                },
                "status": _nullable({"type": "object", "description": "The status block of its last batch."}),
            },
        },
        "Event": {
            "type": "object",
            "required": ["pole_id", "id", "seq", "ts", "type", "priority", "data", "media", "received_at"],
            "properties": {
                "pole_id": _TEXT,
                "id": _TEXT,
                "seq": {"type": "integer"},
                "ts": _NUMBER,
                "type": _TEXT,
                "priority": {"type": "string", "enum": ["alert", "event", "telemetry", "media"]},
                "location": _nullable(location),
                "data": {},
                "media": {"type": "array", "items": {"type": "string", "pattern": SHA256_PATTERN}},
                "received_at": _NUMBER,
            },
        },
        "Layer": {
            "type": "object",
            "required": ["scope", "name", "version", "overlay", "updated_at"],
            "properties": {
                "scope": {"type": "string", "enum": ["pole", "tag"]},
                "name": _TEXT,
                "version": _TEXT,
                "overlay": {"type": "object"},
                "updated_at": _NUMBER,
                "updated_by": _nullable(_TEXT),
            },
        },
        "Overlay": {
            "type": "object",
            "description": "A partial pole configuration: the remotely changeable settings (see README, City "
            "platform); validated with the pole's own models, a 400 naming each bad dotted key otherwise.",
        },
        "Batch": {
            "type": "object",
            "required": ["schema_version", "pole_id", "batch_id", "sent_at", "events"],
            "properties": {
                "schema_version": {"const": 1},
                "pole_id": {"type": "string", "pattern": POLE_ID_PATTERN},
                "batch_id": {"type": "string", "pattern": UUID_PATTERN},
                "sent_at": _NUMBER,
                "events": {"type": "array", "items": {"type": "object"}},
                "status": _nullable({"type": "object"}),
            },
        },
    }
    return components


def _operation(summary: str, responses: dict[str, Json], **more: Any) -> Json:
    return {"summary": summary, "security": [{"bearer": []}], "responses": responses, **more}


def _paths() -> Json:
    token = {"type": "object", "required": ["token", "token_id"]}
    media_types: Json = {
        kind: {"schema": {"type": "string", "format": "binary"}} for kind in ("image/jpeg", "video/mp4")
    }
    served: dict[str, Json] = {
        "200": {"description": "The file", "content": media_types},
        "302": {"description": "A presigned URL of the object store (media.s3.serve = 'redirect')"},
    }
    overlay_body = {
        "required": True,
        "content": {"application/json": {"schema": _ref("Overlay")}, "application/toml": {"schema": _TEXT}},
    }
    return {
        "/v1/batches": {
            "post": _operation(
                "A pole's batch of events (pole token; gzip allowed)",
                {"200": _json(_ref("BatchReply"), "What was stored, duplicated or rejected")} | _auth(400, 413, 415),
                requestBody={"required": True, "content": {"application/json": {"schema": _ref("Batch")}}},
            )
        },
        "/v1/media/{sha256}": {
            "parameters": [_SHA],
            "put": _operation(
                "A redacted JPEG or MP4 clip, content-addressed (pole token)",
                {
                    "200": _json({"type": "object"}, "Stored already"),
                    "201": _json({"type": "object"}, "Stored"),
                }
                | _auth(400, 413, 415),
                requestBody={
                    "required": True,
                    "content": media_types,
                },
            ),
            "get": _operation(
                "A stored file (reader)",
                served | _auth(400, 404),
            ),
        },
        "/v1/events": {
            "get": _operation(
                "Stored events, oldest first, in pages (reader)",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["events", "next_cursor"],
                            "properties": {
                                "events": {"type": "array", "items": _ref("Event")},
                                "next_cursor": _nullable({"type": "integer"}),
                            },
                        },
                        "A page of events",
                    )
                }
                | _auth(400),
                parameters=[
                    _param("pole", "query", {"type": "string", "pattern": POLE_ID_PATTERN}, "Only this pole's."),
                    _param("type", "query", {"type": "string", "pattern": EVENT_TYPE_PATTERN}, "Only this type."),
                    _param("since", "query", _NUMBER, "Events at or after this time (epoch seconds)."),
                    _param("until", "query", _NUMBER, "Events before this time (epoch seconds)."),
                    _param("cursor", "query", {"type": "integer", "minimum": 0}, "The previous page's next_cursor."),
                    _param(
                        "limit",
                        "query",
                        {"type": "integer", "minimum": 1},
                        "Events per page (at most the receiver's events_page_max).",
                    ),
                ],
            )
        },
        "/v1/poles": {
            "get": _operation(
                "The fleet, by pole id, in pages (reader)",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["poles", "next_cursor"],
                            "properties": {
                                "poles": {"type": "array", "items": _ref("Pole")},
                                "next_cursor": _nullable(_TEXT),
                            },
                        },
                        "A page of poles",
                    )
                }
                | _auth(400),
                parameters=[
                    _param("tag", "query", {"type": "string", "pattern": TAG_PATTERN}, "Only poles with this tag."),
                    _param("online", "query", _FLAG, "Only poles online (or offline)."),
                    _param("revoked", "query", _FLAG, "Only revoked (or active) poles."),
                    _param(
                        "cursor",
                        "query",
                        {"type": "string", "pattern": POLE_ID_PATTERN},
                        "The previous page's next_cursor.",
                    ),
                    _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": PAGE_MAX}, "Poles per page."),
                ],
            ),
            "post": _operation(
                "Register a pole; its token is in the answer, once (admin)",
                {
                    "201": _json(
                        token | {"properties": {"pole": _ref("Pole"), "token": _TEXT, "token_id": _TEXT}},
                        "Registered",
                    )
                }
                | _auth(400, 409, 413, 415),
                requestBody={"required": True, "content": {"application/json": {"schema": _ref("NewPole")}}},
            ),
        },
        "/v1/poles/{pole_id}": {
            "parameters": [_POLE_ID],
            "get": _operation("One pole (reader)", {"200": _json(_ref("Pole"), "The pole")} | _auth(400, 404)),
            "patch": _operation(
                "Change a pole's name, location or tags (admin)",
                {"200": _json(_ref("Pole"), "The pole, changed")} | _auth(400, 404, 413, 415),
                requestBody={"required": True, "content": {"application/json": {"schema": _ref("PoleUpdate")}}},
            ),
            "delete": _operation("Revoke a pole (admin)", _revoked() | _auth(400, 404)),
        },
        "/v1/poles/{pole_id}/revoke": {
            "parameters": [_POLE_ID],
            "post": _operation("Revoke a pole: every token; its events stay (admin)", _revoked() | _auth(400, 404)),
        },
        "/v1/poles/{pole_id}/tokens": {
            "parameters": [_POLE_ID],
            "post": _operation(
                "Another token for a pole, shown once (admin)",
                {
                    "201": _json(
                        token | {"properties": {"pole_id": _TEXT, "token": _TEXT, "token_id": _TEXT}}, "The token"
                    )
                }
                | _auth(400, 404),
            ),
        },
        "/v1/poles/{pole_id}/config": {
            "parameters": [_POLE_ID],
            "get": _operation(
                "The pole's effective overlay and version (the pole itself, readers)",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["pole_id", "version", "overlay"],
                            "properties": {
                                "pole_id": _TEXT,
                                "version": _TEXT,
                                "overlay": _ref("Overlay"),
                                "applied_version": _nullable(_TEXT),
                                "error": _nullable(_TEXT),
                                "layers": {"type": "array", "items": _ref("Layer")},
                            },
                        },
                        "The effective overlay; for readers also what the pole runs and the layers",
                    )
                }
                | _auth(400, 404),
            ),
            "put": _operation(
                "Set the pole's own overlay (admin)",
                {"200": _json(_set_answer("pole", {"target_version": _nullable(_TEXT)}), "Stored")}
                | _auth(400, 404, 413, 415),
                requestBody=overlay_body,
            ),
            "delete": _operation(
                "Remove the pole's own overlay (admin)",
                {"200": _json(_set_answer("pole", {"target_version": _nullable(_TEXT)}), "Removed")} | _auth(400, 404),
            ),
        },
        "/v1/tags/{tag}/config": {
            "parameters": [_TAG],
            "get": _operation(
                "A tag's overlay (reader)", {"200": _json(_ref("Layer"), "The overlay")} | _auth(400, 404)
            ),
            "put": _operation(
                "Set a tag's overlay: it reaches every pole with the tag (admin)",
                {"200": _json(_set_answer("tag", {"poles": _target_map()}), "Stored")} | _auth(400, 413, 415),
                requestBody=overlay_body,
            ),
            "delete": _operation(
                "Remove a tag's overlay (admin)",
                {"200": _json(_set_answer("tag", {"poles": _target_map()}), "Removed")} | _auth(400),
            ),
        },
        **_analytics_paths(),
        "/health": {
            "get": {
                "summary": "Liveness: the process answers (open; never asks the database)",
                "security": [],
                "responses": {
                    "200": _json({"type": "object", "required": ["status"], "properties": {"status": _TEXT}}, "Alive")
                },
            }
        },
        "/health/ready": {
            "get": {
                "summary": "Readiness: the database answers and its schema is current (open, for load balancers)",
                "security": [],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status", "database"],
                            "properties": {"status": _TEXT, "database": _TEXT},
                        },
                        "Ready to take traffic",
                    ),
                    "503": _json(
                        {
                            "type": "object",
                            "required": ["status", "error"],
                            "properties": {"status": _TEXT, "error": _TEXT},
                        },
                        "Not ready, and why (never the database's own error text)",
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (open; keep it on an internal network)",
                "security": [],
                "responses": {
                    "200": {"description": "Text exposition format", "content": {"text/plain": {"schema": _TEXT}}}
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This description",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            }
        },
    }


def _rows(row: Json) -> Json:
    """An analytics answer: the whole hours it counted and its rows."""
    return {
        "type": "object",
        "required": ["since", "until", "rows"],
        "properties": {"since": _TEXT, "until": _TEXT, "rows": {"type": "array", "items": row}},
    }


def _row(**fields: Json) -> Json:
    return {"type": "object", "required": list(fields), "properties": fields}


def _analytics_paths() -> Json:
    when = "Epoch seconds or ISO-8601 with a zone (2026-11-30T10:00:00Z); widened to whole hours."
    pole = _param("pole", "query", {"type": "string", "pattern": POLE_ID_PATTERN}, "Only this pole.")
    tag = _param("tag", "query", {"type": "string", "pattern": TAG_PATTERN}, "Only poles carrying this tag now.")
    window = [
        _param("since", "query", _TEXT, when) | {"required": True},
        _param("until", "query", _TEXT, when) | {"required": True},
        pole,
        tag,
    ]
    integer, number = {"type": "integer"}, _NUMBER

    def get(summary: str, row: Json, parameters: list[Json]) -> Json:
        return {
            "get": _operation(summary, {"200": _json(_rows(row), "Rows by hour")} | _auth(400), parameters=parameters)
        }

    return {
        "/v1/analytics/counts": get(
            "Events counted by type, pole, hour or day (reader)",
            _row(key=_TEXT, count=integer),
            [
                _param("by", "query", {"type": "string", "enum": list(BY_VALUES)}, "What to count by.")
                | {"required": True},
                _param("type", "query", {"type": "string", "pattern": EVENT_TYPE_PATTERN}, "Only this type."),
                *window,
            ],
        ),
        "/v1/analytics/last24h": get(
            "Events per hour and type over the last 24 hours (reader)",
            _row(hour=_TEXT, type=_TEXT, count=integer),
            [pole, tag],
        ),
        "/v1/analytics/traffic": get(
            "People and vehicles per counting line, direction and class, per hour (reader)",
            _row(hour=_TEXT, pole_id=_TEXT, line=_TEXT, direction=_TEXT, **{"class": _TEXT}, count=integer),
            window,
        ),
        "/v1/analytics/air": get(
            "PM2.5 and PM10 mean and max per hour and pole (reader)",
            _row(
                hour=_TEXT,
                pole_id=_TEXT,
                pm25_mean=number,
                pm25_max=number,
                pm10_mean=number,
                pm10_max=number,
                samples=integer,
            ),
            window,
        ),
        "/v1/analytics/speed": get(
            "Vehicle speeds per hour and pole: count, p50, p85, max and violations (reader)",
            _row(hour=_TEXT, pole_id=_TEXT, count=integer, p50=number, p85=number, max=number, violations=integer),
            window,
        ),
    }


def _revoked() -> dict[str, Json]:
    return {
        "200": _json(
            {
                "type": "object",
                "required": ["pole", "tokens_revoked"],
                "properties": {"pole": _ref("Pole"), "tokens_revoked": {"type": "integer"}},
            },
            "Revoked",
        )
    }


def _target_map() -> Json:
    return {"type": "object", "additionalProperties": _TEXT, "description": "Each pole reached: its target version."}


def _set_answer(scope: str, more: Json) -> Json:
    return {
        "type": "object",
        "required": [scope, "overlay", "version"],
        "properties": {scope: _TEXT, "overlay": _ref("Overlay"), "version": _TEXT} | more,
    }


@functools.cache
def description() -> Json:
    """The whole document (built once)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SmartPole receiver",
            "version": "1",
            "description": "Batches and media from poles; events, the fleet and remote configuration for the city. "
            'Every refusal is a JSON {"error": ...} naming what was wrong.',
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A pole, reader or admin token (smartpole receiver add-pole/add-reader/add-admin).",
                }
            },
        },
    }


async def serve(request: web.Request) -> web.Response:
    """``GET /openapi.json``: open, like the source it is generated next to."""
    return json_response(description())
