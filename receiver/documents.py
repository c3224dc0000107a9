"""Reading the small JSON (or TOML) documents admins send, and the path and query values
every fleet route checks: each problem becomes a 4xx whose message names what was wrong."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from httpkit.body import BadEncoding, BodyTooLarge, read_body, require_identity
from receiver.store.base import TAG_PATTERN
from sync.protocol import POLE_ID_PATTERN, describe_validation

M = TypeVar("M", bound=BaseModel)

MAX_DOCUMENT_BYTES = 256_000
JSON_TYPES = ("application/json",)
TOML_TYPES = ("application/toml", "text/toml", "text/x-toml")

_POLE_ID = re.compile(POLE_ID_PATTERN)
_TAG = re.compile(TAG_PATTERN)


class BadRequest(Exception):
    """A request to answer with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


async def read_document(request: web.Request, toml: bool = False) -> Any:
    """The request's JSON body (or TOML, when ``toml`` and the content type says so), parsed."""
    ctype = request.content_type
    accepted = JSON_TYPES + (TOML_TYPES if toml else ())
    if ctype not in accepted:
        raise BadRequest(415, f"content type must be {' or '.join(accepted)}, not {ctype!r}")
    try:
        require_identity(request)
        raw = bytes(await read_body(request, MAX_DOCUMENT_BYTES))
    except BadEncoding as exc:
        raise BadRequest(exc.status, str(exc)) from None
    except BodyTooLarge:
        raise BadRequest(413, f"body larger than {MAX_DOCUMENT_BYTES} bytes") from None
    if ctype in TOML_TYPES:
        try:
            return tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise BadRequest(400, f"body is not valid TOML: {exc}") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, f"body is not valid JSON: {exc}") from None


def parse_model(model: type[M], doc: Any) -> M:
    """``doc`` validated as ``model``; a 400 naming the first problems' keys otherwise."""
    if not isinstance(doc, dict):
        raise BadRequest(400, "body must be a JSON object")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise BadRequest(400, describe_validation(exc)) from None


def pole_id_of(request: web.Request) -> str:
    pole_id = request.match_info["pole_id"]
    if not _POLE_ID.match(pole_id):
        raise BadRequest(400, "pole id: letters, digits, . _ - (at most 64), starting with a letter or digit")
    return pole_id


def tag_of(request: web.Request) -> str:
    tag = request.match_info["tag"]
    if not _TAG.match(tag):
        raise BadRequest(400, "tag: letters, digits, . _ : - (at most 64), starting with a letter or digit")
    return tag


def flag(query: Mapping[str, str], name: str) -> bool | None:
    text = query.get(name)
    if text is None:
        return None
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise BadRequest(400, f"{name}: 'true' or 'false', not {text[:40]!r}")
