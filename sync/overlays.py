"""Configuration overlays as plain data, shared by the pole and the receiver: merging and versions.

What an overlay may hold is the pole's business (``gateway/remote_config.py``); how
overlays combine and which version a combination has is part of the protocol between
pole and receiver: every batch reply names a version the pole compares with its own.

Tables merge key by key; anything else (a value, a list) is replaced whole. A pole's
effective overlay is its tags' overlays (by tag name), then its own, each merged over
the ones before. Its version is a hash of its content, ``"0"`` when it is empty, so both
sides compute the same version from the same overlay.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

EMPTY_VERSION = "0"


class OverlayError(ValueError):
    """An overlay that cannot be used; ``problems`` are ``dotted.key: why`` lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` over ``base``: tables merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def effective_overlay(layers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Layers merged in order, each over the ones before (tags by name, then the pole's own)."""
    out: dict[str, Any] = {}
    for layer in layers:
        out = merge(out, layer)
    return out


def overlay_version(overlay: Mapping[str, Any]) -> str:
    """The version of an effective overlay: ``"0"`` for none, else a hash of its content."""
    if not overlay:
        return EMPTY_VERSION
    return hashlib.sha256(orjson.dumps(overlay, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
