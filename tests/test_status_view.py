"""The status page never breaks on a value: a ts far out is refused at the ingest API, and every
formatter of the page is total (it returns text for any value it may be given)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import aiohttp
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.status import (
    ComponentStatus,
    DiskStatus,
    ModelStatus,
    PoleInfo,
    PoleStatus,
    RecentEventStatus,
    SensorStatus,
    UplinkStatus,
)
from gateway.web.status_view import _summary, build_view, fmt_ago, fmt_bytes, fmt_counts, fmt_duration, fmt_time
from sync.events import Location, Priority
from sync.outbox import DeadLetter, OutboxStats
from tests.helpers.pole import standalone_pole

PASSWORD = "status-view-password"
numbers = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([1e20, -1e20, 1e308, 2.0**63, 2**64]),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(value=numbers, now=numbers)
def test_every_formatter_is_total(value: Any, now: Any) -> None:
    for text in (
        fmt_time(value),
        fmt_duration(value),
        fmt_bytes(value),
        fmt_ago(value, now if now is not None else time.time()),
    ):
        assert isinstance(text, str)


@settings(max_examples=200, deadline=None)
@given(data=st.dictionaries(st.text(max_size=8), json_values, max_size=5), counts=json_values)
def test_summaries_and_counts_are_total(data: dict[str, Any], counts: Any) -> None:
    assert isinstance(_summary(data), str)
    assert isinstance(fmt_counts(counts if isinstance(counts, dict) else {"n": counts}), str)
    too_long_to_print = 10**5000  # str() refuses it; hypothesis cannot show it either, so not drawn
    assert isinstance(_summary({**data, "n": too_long_to_print}), str)
    assert isinstance(fmt_counts({"n": too_long_to_print}), str)


def extreme_status(x: Any) -> PoleStatus:
    outbox = OutboxStats({"event": 1}, {"event": 10}, x, x, x, {"cap:media": 1}, 0, x, 2, "full", x)
    return PoleStatus(
        now=time.time(),
        pole=PoleInfo("p", "v", "c", x, x, Location(x, x, "gps"), None),
        outbox=outbox,
        uplink=UplinkStatus("backoff", x, "err", x, x, x, {"ok": 1}, 1, x, None),
        disk=DiskStatus(x, x, "/"),
        models=[ModelStatus("m", True, x, 1)],
        sensors=[SensorStatus("s", "radar", "/dev/x", "connected", True, 1, {}, {"speed": x}, x)],
        dead_letters=[DeadLetter("id", 1, Priority.EVENT, "t", "why", x)],
        recent_events=[RecentEventStatus("id", 1, "t", "event", x, {"v": x, "big": 10**5000}, False)],
        components=[ComponentStatus("uplink", True, 0, None)],
    )


def test_build_view_takes_any_stored_value() -> None:
    for x in (1e20, -1e20, math.inf, -math.inf, math.nan, 1e308, 2**63, -(2**63)):
        view = build_view(extreme_status(x))
        assert view["text"]["uptime"] and view["tables"]["events"]


async def test_the_page_survives_what_ingest_is_sent(tmp_path: Path) -> None:
    async with standalone_pole(tmp_path, PASSWORD) as pole:
        async with aiohttp.ClientSession(headers=pole.headers) as s:
            for ts in (1e20, -1.0, time.time() + 2 * 86400, time.time() - 31 * 86400):
                async with s.post(pole.url + "/v1/events", json={"type": "reading", "ts": ts}) as r:
                    assert r.status == 400 and (await r.json())["error"].startswith("ts: "), ts
            odd = {"big": 2**63 - 1, "small": -(2**63), "tiny": 5e-324, "huge": 1.7e308, "text": "é" * 5000}
            async with s.post(pole.url + "/v1/events", json={"type": "reading", "data": odd}) as r:
                assert r.status == 201
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            async with s.post(pole.url + "/login", data={"password": PASSWORD}) as r:
                assert r.status == 200
            for path in ("/", "/status.json"):
                async with s.get(pole.url + path) as r:
                    assert r.status == 200, path
