"""One event policy, applied on the pole before an event is committed and again at the receiver
before it is stored.

A policy says which event types may pass (``allowed_types``, empty for all, and
``denied_types``) and what of an event's data may: ``redact`` rules name fields by
path and say what becomes of them:

- ``drop`` removes the field;
- ``hash`` replaces its value by ``"hmac-sha256:<hex>"``, an HMAC-SHA256 of the value
  (a string's UTF-8 text, anything else as sorted JSON) under a secret: on the pole
  the deployment's plate secret (``privacy.plates.secret``), at the receiver a
  secret of its own (``[policy] secret``), so a hash made by the receiver differs
  from one a pole made of the same value. A value hashed already is left as it is;
- ``keep`` leaves it.

For each field the first rule that names it decides, so a ``keep`` before a broader
``drop`` makes an exception. Paths start at ``data`` and go down by ``.key``;
``*`` is any key of an object, ``[*]`` every item of a list and ``**`` any depth
(zero or more levels of objects and lists): ``data.plate_text``,
``data.plates[*].text``, ``data.**.plate_text``. The default policy drops plate text
wherever it is (``data.**.plate_text``).

The receiver applies its own policy to what the pole's policy let through, so it
can refuse or redact more but never give back what a pole removed: its policy can
only be stricter.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from sync.protocol import EVENT_TYPE_PATTERN

Action = Literal["drop", "hash", "keep"]
EventType = Annotated[str, StringConstraints(pattern=EVENT_TYPE_PATTERN)]

HASH_PREFIX = "hmac-sha256:"
PLATE_TEXT_PATH = "data.**.plate_text"

_SEGMENT = re.compile(r"^(?P<head>[A-Za-z0-9_-]{1,128}|\*\*|\*)?(?P<items>(\[\*\])*)$")

# A parsed path: ("key", name) | ("any",) | ("items",) | ("deep",)
Step = tuple[str, ...]
Where = tuple[str | int, ...]  # where a field is, from ``data`` down: keys and list indices


class PathError(ValueError):
    pass


def parse_path(path: str) -> tuple[Step, ...]:
    """The steps of a redaction path below ``data``; :class:`PathError` says what is wrong with it."""
    parts = path.split(".")
    if parts[0] != "data":
        raise PathError(f"path {path!r} must start with 'data' (the event's data object)")
    steps: list[Step] = []
    for part in parts[1:]:
        match = _SEGMENT.match(part)
        if not part or match is None or match["head"] is None:
            raise PathError(
                f"path {path!r}: {part!r} is not a key (letters, digits, _ and -), '*', '**' or '[*]' after one"
            )
        head = match["head"]
        if head == "**":
            if steps and steps[-1] == ("deep",):
                raise PathError(f"path {path!r}: '**' twice in a row")
            steps.append(("deep",))
        elif head == "*":
            steps.append(("any",))
        else:
            steps.append(("key", head))
        steps += [("items",)] * (len(match["items"]) // 3)
    if not steps or steps[-1][0] not in ("key", "any"):
        raise PathError(f"path {path!r} must end with a key or '*': the field to drop, hash or keep")
    return tuple(steps)


class RedactRule(BaseModel):
    """What becomes of the fields one path names."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        ...,
        max_length=256,
        description="Fields, from 'data': '.key', '*' any key, '[*]' every list item, '**' any depth "
        "(e.g. 'data.plates[*].text', 'data.**.plate_text').",
    )
    action: Action = Field(
        "drop", description="'drop' removes the field, 'hash' replaces it with an HMAC-SHA256, 'keep' leaves it."
    )
    types: list[EventType] = Field(
        default_factory=list, description="Event types the rule applies to; empty: every type."
    )

    @field_validator("path")
    @classmethod
    def _parses(cls, path: str) -> str:
        parse_path(path)
        return path


def _plate_text_rule() -> list[RedactRule]:
    return [RedactRule(path=PLATE_TEXT_PATH, action="drop")]


class EventPolicy(BaseModel):
    """Which events may pass, and what of their data."""

    model_config = ConfigDict(extra="forbid")

    allowed_types: list[EventType] = Field(
        default_factory=list, description="Event types that may pass; empty: every type not denied."
    )
    denied_types: list[EventType] = Field(default_factory=list, description="Event types that never pass.")
    redact: list[RedactRule] = Field(
        default_factory=_plate_text_rule,
        description="Rules for fields of the data, in order (the first naming a field decides); "
        "default: plate text is dropped wherever it is.",
    )

    def hashes(self) -> bool:
        """True if some rule hashes (and so a secret is needed)."""
        return any(rule.action == "hash" for rule in self.redact)


class Decision(NamedTuple):
    """What a policy makes of one event: ``refusal`` says why it may not pass (None: it may), and
    ``data`` is what of its data passes (the very object given when nothing changed). A NamedTuple:
    one is made per event at the receiver's ingest."""

    refusal: str | None
    data: Mapping[str, Any]
    redacted: int = 0  # fields dropped or hashed


def keyed_hash(key: bytes, value: Any) -> str:
    """``"hmac-sha256:<hex>"`` of a string's text, or of any other value as sorted JSON."""
    text = value.encode() if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return HASH_PREFIX + hmac.new(key, text, hashlib.sha256).hexdigest()


def is_hashed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(HASH_PREFIX)


def find(data: Any, steps: tuple[Step, ...]) -> Iterator[tuple[Where, Any]]:
    """Every field ``steps`` name in ``data``: (where it is, its value)."""
    yield from _find(data, steps, 0, ())


def _find(node: Any, steps: tuple[Step, ...], i: int, where: Where) -> Iterator[tuple[Where, Any]]:
    step = steps[i]
    last = i == len(steps) - 1
    kind = step[0]
    if kind == "deep":
        yield from _find(node, steps, i + 1, where)  # zero levels
        children: Any = node.items() if isinstance(node, Mapping) else enumerate(node) if isinstance(node, list) else ()
        for key, child in children:
            if isinstance(child, (Mapping, list)):
                yield from _find(child, steps, i, (*where, key))
        return
    if kind == "items":
        if isinstance(node, list):
            for n, child in enumerate(node):
                yield from _find(child, steps, i + 1, (*where, n))
        return
    if not isinstance(node, Mapping):
        return
    if kind == "key":
        name = step[1]
        if name in node:
            if last:
                yield (*where, name), node[name]
            else:
                yield from _find(node[name], steps, i + 1, (*where, name))
        return
    for key, child in node.items():  # "any"
        if last:
            yield (*where, key), child
        else:
            yield from _find(child, steps, i + 1, (*where, key))


@dataclass(frozen=True, slots=True)
class _Rule:
    steps: tuple[Step, ...]
    action: Action
    types: frozenset[str]
    needle: bytes | None  # the field's name as JSON: when absent from the data's JSON, nothing matches

    def applies_to(self, type_: str) -> bool:
        return not self.types or type_ in self.types


def compile_rule(path: str, action: Action = "drop", types: frozenset[str] = frozenset()) -> _Rule:
    steps = parse_path(path)
    needle = orjson.dumps(steps[-1][1]) + b":" if steps[-1][0] == "key" else None
    return _Rule(steps, action, types, needle)


class PolicyEngine:
    """A policy ready to apply; ``who`` names its owner in refusals ("this pole", "this receiver")."""

    def __init__(self, policy: EventPolicy, key: bytes | None, who: str) -> None:
        if policy.hashes() and not key:
            raise ValueError(f"{who}'s policy hashes fields but has no secret to hash them with")
        self.policy = policy
        self.who = who
        self._key = key or b""
        self._allowed = frozenset(policy.allowed_types)
        self._denied = frozenset(policy.denied_types)
        self._rules = [compile_rule(r.path, r.action, frozenset(r.types)) for r in policy.redact]
        self._for_type: dict[str, list[_Rule]] = {}  # the rules that apply to a type

    def refusal(self, type_: str) -> str | None:
        if type_ in self._denied:
            return f"type: {type_!r} is denied by {self.who}'s policy"
        if self._allowed and type_ not in self._allowed:
            return f"type: {type_!r} is not among the types {self.who}'s policy allows"
        return None

    def decide(self, type_: str, data: Mapping[str, Any]) -> Decision:
        refusal = self.refusal(type_)
        if refusal is not None:
            return Decision(refusal, data)
        return self.redact(type_, data)

    def redact(self, type_: str, data: Mapping[str, Any], raw: bytes | None = None) -> Decision:
        """``data`` with the rules for ``type_`` applied; ``raw``, if the caller has it, is ``data`` as JSON."""
        rules = self._for_type.get(type_)
        if rules is None:
            rules = [r for r in self._rules if r.applies_to(type_)]
            if len(self._for_type) < 4096:
                self._for_type[type_] = rules
        if not rules or not data:
            return Decision(None, data)
        decided: dict[Where, Action] | None = None
        for rule in rules:
            if rule.needle is not None:
                raw = orjson.dumps(data) if raw is None else raw
                if rule.needle not in raw:  # the common case: one C call, no walk
                    continue
            for where, value in find(data, rule.steps):
                decided = {} if decided is None else decided
                if where not in decided:
                    decided[where] = "keep" if rule.action == "hash" and is_hashed(value) else rule.action
        changes = {w: a for w, a in decided.items() if a != "keep"} if decided else None
        if not changes:
            return Decision(None, data)
        out = copy.deepcopy(dict(data))
        # Deepest first, so dropping an object never comes before changing a field inside it.
        for where in sorted(changes, key=len, reverse=True):
            parent: Any = out
            for part in where[:-1]:
                parent = parent[part]
            if changes[where] == "drop":
                del parent[where[-1]]
            else:
                parent[where[-1]] = keyed_hash(self._key, parent[where[-1]])
        return Decision(None, out, len(changes))
