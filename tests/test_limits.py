"""sync.limits: the outbox's fast check agrees with the full walk over the values, for any data."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync import limits

values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),  # what orjson can write
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=10),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=40,
)
deep = st.integers(min_value=1, max_value=60).map(lambda n: orjson.loads(b"[" * n + b"]" * n))


def verdict(check: Any) -> str | None:
    try:
        check()
    except limits.Unstorable as exc:
        return exc.where
    return None


@settings(max_examples=200, deadline=None)
@given(data=st.dictionaries(st.text(max_size=5), values | deep, max_size=5))
def test_the_fast_check_finds_what_the_walk_finds(data: dict[str, Any]) -> None:
    ts = time.time()
    encoded = orjson.dumps({"ts": ts, "type": "x", "priority": "event", "location": None, "data": data, "media": []})
    walked = verdict(lambda: limits.check_value(data))
    if walked is None and len(orjson.dumps(data)) > limits.MAX_DATA_BYTES:
        walked = "data"
    assert verdict(lambda: limits.check_event(ts, data, encoded)) == walked


@pytest.mark.parametrize("ts", [-1.0, 1e20, float("nan"), float("inf"), "now", True, 253_402_300_800.0])
def test_timestamps_outside_the_range_are_named(ts: Any) -> None:
    with pytest.raises(limits.Unstorable) as caught:
        limits.check_event(ts, {}, b"{}")
    assert caught.value.where == "ts"


def test_loads_keeps_integers_beyond_64_bits_exact() -> None:
    assert limits.loads(b'{"n": 18446744073709551616}') == {"n": 2**64}
    assert limits.loads(b'{"n": -9223372036854775809}') == {"n": -(2**63) - 1}
    assert limits.loads(b'{"s": "12345678901234567890", "f": 1.5}') == {"s": "12345678901234567890", "f": 1.5}
