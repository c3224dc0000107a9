"""What a receiver can store: the one definition of a storable event, on the pole and at the receiver.

An event that breaks one of these rules would be refused by one of the receiver's databases
(PostgreSQL's ``text`` and ``jsonb`` cannot hold U+0000, ``bigint`` ends at 2**63-1, JSON
readers lose integers beyond 64 bits, deep nesting exhausts parsers), so it is refused where it
enters instead: by the pole's ingest API (a 400 naming the field), by the outbox for every
producer (a ``ValueError`` naming the field: nothing unstorable is ever committed) and by the
receiver's batch parser (a rejection naming the event). The rules:

- **strings and object keys** hold no NUL character (U+0000);
- **integers** are signed 64-bit: ``INT64_MIN`` .. ``INT64_MAX`` (-2**63 .. 2**63-1);
- **floats** are finite (JSON has no NaN or infinity; a producer's NaN would be written as null);
- **nesting**: ``data`` holds at most ``MAX_DEPTH`` levels of objects and arrays, ``data`` itself
  being the first (``{"a": [1]}`` is two levels);
- **ts** is epoch seconds from ``TS_MIN`` to ``TS_MAX`` (1970-01-01 to 9999-12-31 UTC: a date
  every system can format). The pole's ingest API narrows it to a window around now
  (``http.max_future_s``, ``http.max_past_s``); the receiver's policy refuses the future beyond
  ``policy.max_future_s``;
- **seq** is 1 .. ``INT64_MAX``;
- ``data`` is at most ``MAX_DATA_BYTES`` of JSON.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

MAX_DEPTH = 32
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
TS_MIN = 0.0
TS_MAX = 253_402_300_799.0  # 9999-12-31T23:59:59Z
MAX_DATA_BYTES = 64_000

# In JSON text written by orjson, what may hide a breach of the rules: an escaped NUL, a run of 19
# digits (every integer outside 64 bits has at least 19), more brackets than MAX_DEPTH. Text with
# none of them is storable as far as strings, integers and depth go. (Digits are found by mapping
# them all to "0" and brackets to "[": a regular expression for 19 digits costs four times more.)
_SHAPE = bytes(48 if 48 <= i <= 57 else 91 if i in (91, 123) else 32 for i in range(256))
_NINETEEN_DIGITS = b"0" * 19
# An integer token of 19 digits or more: orjson reads those beyond 64 bits as floats, silently.
_HUGE_INT = re.compile(rb"[\[:,]\s*-?[0-9]{19,}\s*[,\]}]")


class Unstorable(ValueError):
    """A value the receiver cannot store; ``where`` is the field (``data.a[2]``), ``why`` the rule broken."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.where = where
        self.why = why


def _key(where: str, key: str) -> str:
    return f"{where}.{key}" if key.isidentifier() else f"{where}[{json.dumps(key)}]"


def check_value(value: Any, where: str = "data", depth: int = 1) -> None:
    """Raise :class:`Unstorable` naming the first part of ``value`` that breaks the rules."""
    if isinstance(value, str):
        if "\x00" in value:
            raise Unstorable(where, "contains a NUL character (U+0000), which cannot be stored")
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise Unstorable(where, f"integer outside the signed 64-bit range ({INT64_MIN} .. {INT64_MAX})")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise Unstorable(where, "must be a finite number")
    elif isinstance(value, dict):
        if depth > MAX_DEPTH:
            raise Unstorable(where, f"nested deeper than {MAX_DEPTH} levels of objects and arrays")
        for key, item in value.items():
            if not isinstance(key, str):
                raise Unstorable(where, f"object key {key!r} is not a string")
            if "\x00" in key:
                raise Unstorable(where, f"object key {json.dumps(key)} contains a NUL character (U+0000)")
            check_value(item, _key(where, key), depth + 1)
    elif isinstance(value, (list, tuple)):
        if depth > MAX_DEPTH:
            raise Unstorable(where, f"nested deeper than {MAX_DEPTH} levels of objects and arrays")
        for i, item in enumerate(value):
            check_value(item, f"{where}[{i}]", depth + 1)


def check_ts(ts: Any, where: str = "ts") -> None:
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise Unstorable(where, "must be a number of epoch seconds")
    if not TS_MIN <= ts <= TS_MAX:  # NaN fails both comparisons
        raise Unstorable(where, f"must be epoch seconds from {TS_MIN:.0f} to {TS_MAX:.0f} (years 1970 to 9999)")


def _suspect(encoded: bytes) -> bool:
    if b"\\u0000" in encoded:
        return True
    shape = encoded.translate(_SHAPE)
    return _NINETEEN_DIGITS in shape or shape.count(b"[") > MAX_DEPTH


def _dumps(data: Any) -> bytes:
    try:
        return orjson.dumps(data)
    except TypeError as exc:
        check_value(data)  # names the culprit when it is one of the rules (orjson stops at 255 levels)
        raise Unstorable("data", f"not JSON-serialisable: {exc}") from None


def check_data(data: Any, encoded: bytes | None = None) -> None:
    """``data`` as a whole: the rules above and its size. ``encoded`` is JSON text holding it (the
    event's, when the caller has it); it lets the common case skip the walk over every value."""
    exact = encoded is None
    if encoded is None:
        encoded = _dumps(data)
    if _suspect(encoded):
        check_value(data)
    size = len(encoded)
    if size > MAX_DATA_BYTES and not exact:
        size = len(_dumps(data))
    if size > MAX_DATA_BYTES:
        raise Unstorable("data", f"larger than {MAX_DATA_BYTES} bytes of JSON ({size})")


def check_event(ts: Any, data: Any, encoded: bytes) -> None:
    """What a producer hands to the outbox: its timestamp and data (``encoded``: the event's JSON).
    On the outbox's hot path, so the common case is a few C calls (about a microsecond)."""
    if type(ts) is not float or not TS_MIN <= ts <= TS_MAX:
        check_ts(ts)
    if b"\\u0000" in encoded or len(encoded) > MAX_DATA_BYTES:
        check_data(data, encoded)
        return
    shape = encoded.translate(_SHAPE)
    if _NINETEEN_DIGITS in shape or shape.count(b"[") > MAX_DEPTH:
        check_value(data)


def loads(document: bytes | bytearray | str) -> Any:
    """``orjson.loads``, but with integers beyond 64 bits kept exact (orjson turns them into floats),
    so that the rules can refuse them instead of storing a different number."""
    value = orjson.loads(document)
    raw = document.encode() if isinstance(document, str) else document
    if _NINETEEN_DIGITS in raw.translate(_SHAPE) and _HUGE_INT.search(raw):  # the first test is ten times faster
        try:
            value = json.loads(raw)
        except RecursionError:
            raise orjson.JSONDecodeError("nested too deeply", "", 0) from None
    return value
