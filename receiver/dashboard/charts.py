"""``GET /charts``: the city's figures per hour, drawn as SVG on the server from the analytics rollups
(:mod:`receiver.store.analytics`): events by type, air quality (PM2.5 and PM10 means) and vehicle
speeds (p85) by pole, over the last 6 hours to 7 days, for the whole fleet, one pole or one tag."""

from __future__ import annotations

import re
import time

from aiohttp import web

from receiver.context import Context
from receiver.dashboard.render import Renderer
from receiver.dashboard.svg import by_series, line_chart
from receiver.store.analytics import Window
from receiver.store.base import TAG_PATTERN
from receiver.store.rollups import HOUR, hour_of
from sync.protocol import POLE_ID_PATTERN

SPANS_H = (6, 24, 72, 168)
_POLE_ID = re.compile(POLE_ID_PATTERN)
_TAG = re.compile(TAG_PATTERN)


class ChartsPage:
    def __init__(self, ctx: Context, render: Renderer) -> None:
        self.ctx = ctx
        self.render = render

    async def page(self, request: web.Request) -> web.Response:
        q = {k: v for k, v in request.query.items() if v != ""}
        hours_text = q.get("hours", "24")
        if hours_text not in {str(h) for h in SPANS_H}:
            return self.render.error(request, 400, f"hours: one of {', '.join(map(str, SPANS_H))}")
        pole, tag = q.get("pole"), q.get("tag")
        if pole is not None and not _POLE_ID.match(pole):
            return self.render.error(request, 400, "pole: not a pole id (letters, digits, . _ -, at most 64)")
        if tag is not None and not _TAG.match(tag):
            return self.render.error(request, 400, "tag: letters, digits, . _ : - (at most 64)")
        hours = int(hours_text)
        until = hour_of(time.time()) + HOUR  # the hour under way is the last one drawn
        since = until - hours * HOUR
        window = Window(since, until, pole, tag)
        store = self.ctx.store
        limit = self.ctx.config.analytics_max_rows
        counts = await store.analytics_hours_by_type(window)
        air = await store.analytics_air(window, limit)
        speed = await store.analytics_speed(window, limit)
        charts = [
            line_chart(
                "Events per hour, by type",
                "events",
                by_series([(type_, hour, float(n)) for hour, type_, n in counts]),
                since,
                until,
                additive=True,
            ),
            line_chart(
                "PM2.5 per hour (mean), by pole",
                "µg/m³",
                by_series([(r.pole_id, r.hour, r.pm25_mean) for r in air]),
                since,
                until,
                additive=False,
            ),
            line_chart(
                "PM10 per hour (mean), by pole",
                "µg/m³",
                by_series([(r.pole_id, r.hour, r.pm10_mean) for r in air]),
                since,
                until,
                additive=False,
            ),
            line_chart(
                "Vehicle speed per hour (85th percentile), by pole",
                "km/h",
                by_series([(r.pole_id, r.hour, r.p85) for r in speed]),
                since,
                until,
                additive=False,
            ),
        ]
        truncated = len(air) >= limit or len(speed) >= limit
        return self.render.page(
            request,
            "charts.html",
            charts=charts,
            spans=SPANS_H,
            hours=hours,
            pole=pole or "",
            tag=tag or "",
            violations=sum(r.violations for r in speed),
            passes=sum(r.count for r in speed),
            truncated=truncated,
        )
