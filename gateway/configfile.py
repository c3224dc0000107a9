"""Loading TOML configuration into strict pydantic models, with errors people can act on.

Every problem is reported as ``FILE: dotted.key: why``, all of them at once, so a
technician fixes a file in one pass. The value found is quoted (``(got 'knots')``)
except for secret fields, whose value is never echoed: only what is wrong with it.
Secrets never need to live in the file: any field typed ``SecretStr`` may come
from ``SMARTPOLE_<SECTION>_<KEY>`` (for ``uplink.token``: ``SMARTPOLE_UPLINK_TOKEN``),
which wins over the file.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
import types
import typing
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError

M = TypeVar("M", bound=BaseModel)

ENV_PREFIX = "SMARTPOLE_"


class ConfigError(Exception):
    """A configuration file that cannot be used; ``problems`` are ``dotted.key: why`` lines."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types inside ``X | None`` and ``Optional[X]``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def secret_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Dotted paths of every ``SecretStr`` field, recursing into nested models."""
    for name, info in model.model_fields.items():
        for kind in _unwrap(info.annotation):
            if kind is SecretStr:
                yield (*prefix, name)
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                yield from secret_fields(kind, (*prefix, name))


def _secret_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    """Names of every ``SecretStr`` field anywhere in the model, inside lists and unions too."""
    seen = set() if seen is None else seen
    seen.add(model)
    names: set[str] = set()
    for name, info in model.model_fields.items():
        stack = [info.annotation]
        while stack:
            kind = stack.pop()
            if kind is SecretStr:
                names.add(name)
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                if kind not in seen:
                    names |= _secret_names(kind, seen)
            else:
                stack.extend(typing.get_args(kind))
    return names


def env_name(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + "_".join(path).upper()


def apply_env_secrets(model: type[BaseModel], doc: dict[str, Any], env: Mapping[str, str]) -> None:
    for path in secret_fields(model):
        value = env.get(env_name(path))
        if value is None:
            continue
        node = doc
        for key in path[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                break  # the file has a non-table here; validation will name it
            node = child
        else:
            node[path[-1]] = value


def describe_error(err: Mapping[str, Any], secrets: Collection[str] = ()) -> str:
    """One problem as ``dotted.key: why``; the value given is shown, unless the key is a secret's."""
    key = ".".join(str(part) for part in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        why = "unknown key (not a setting here; check the spelling and the section)"
    elif kind == "missing":
        why = "required but missing"
    else:
        why = err["msg"]
        secret = any(part in secrets for part in err["loc"])
        if secret:
            why += " (the value is a secret and is not shown)"
        elif "input" in err and kind not in ("model_type", "dict_type") and not isinstance(err["input"], (dict, list)):
            why += f" (got {err['input']!r})"
    return f"{key}: {why}"


def read_toml(path: Path) -> tuple[dict[str, Any], bytes]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, ["file not found"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror or exc}"]) from None
    try:
        return tomllib.loads(raw.decode("utf-8")), raw
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"not UTF-8 text: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None


def validate(model: type[M], doc: dict[str, Any], path: Path, env: Mapping[str, str] | None = None) -> M:
    """Validate an already-parsed document, reporting every error against ``path``."""
    apply_env_secrets(model, doc, os.environ if env is None else env)
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        secrets = _secret_names(model)
        raise ConfigError(path, [describe_error(e, secrets) for e in exc.errors()]) from None


def load_config(path: Path, model: type[M], env: Mapping[str, str] | None = None) -> M:
    """Read, parse and validate a TOML file; raise :class:`ConfigError` naming every problem."""
    doc, _ = read_toml(path)
    return validate(model, doc, path, env)


def config_version(path: Path) -> str:
    """A short fingerprint of the file's bytes, reported upstream so ops see which config runs."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError:
        return "unknown"
