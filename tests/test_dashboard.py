"""The dashboard over real HTTP on both backends: logins and sessions in the database, CSRF,
roles, the pages and the admins' forms, escaping and the security headers."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from httpkit.csrf import FORM_FIELD
from httpkit.passwords import hash_password
from receiver.config import DashboardSection
from receiver.dashboard.auth import COOKIE
from receiver.store.base import PoleChanges, PoleQuery
from sync.protocol import token_hash
from tests.conftest import DATA, RunningReceiver, start_receiver, stop_receiver
from tests.test_receiver import batch, event, post

ADMIN_PASSWORD = "admin password 1"
READER_PASSWORD = "reader password 1"
JPEG = (DATA / "vehicles" / "person.jpg").read_bytes()
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
async def rx(receiver: RunningReceiver) -> RunningReceiver:
    await receiver.store.put_user("ops", "admin", hash_password(ADMIN_PASSWORD), time.time())
    await receiver.store.put_user("viewer", "reader", hash_password(READER_PASSWORD), time.time())
    return receiver


def browser_session() -> aiohttp.ClientSession:
    # unsafe: the cookie jar keeps cookies of IP addresses (127.0.0.1) too.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def log_in(s: aiohttp.ClientSession, url: str, user: str, password: str) -> aiohttp.ClientResponse:
    async with s.post(url + "/login", data={"user": user, "password": password}, allow_redirects=False) as r:
        await r.read()
        return r


async def page(s: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with s.get(url, allow_redirects=False) as r:
        return r.status, await r.text()


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has a form with a CSRF token"
    return found.group(1)


async def form(s: aiohttp.ClientSession, url: str, fields: dict[str, str], csrf: str | None) -> tuple[int, str, Any]:
    data = dict(fields)
    if csrf is not None:
        data[FORM_FIELD] = csrf
    async with s.post(url, data=data, allow_redirects=False) as r:
        return r.status, await r.text(), r.headers


async def test_login_session_in_the_database_and_logout(rx: RunningReceiver, database_url: str, tmp_path: Path) -> None:
    async with browser_session() as s:
        status, _ = await page(s, rx.url + "/")
        assert status == 303, "no session: to the login page"
        r = await log_in(s, rx.url, "ops", "wrong password")
        assert r.status == 401
        r = await log_in(s, rx.url, "nobody", ADMIN_PASSWORD)
        assert r.status == 401, "an unknown user is refused like a wrong password"
        r = await log_in(s, rx.url, "ops", ADMIN_PASSWORD)
        assert r.status == 303 and r.headers["Location"] == "/"
        first = r.cookies[COOKIE].value
        r = await log_in(s, rx.url, "ops", ADMIN_PASSWORD)
        assert await rx.store.lookup_session(token_hash(first), time.time()) is None, "a new login replaces it"
        cookie = r.cookies[COOKIE]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and not cookie["secure"]
        session = cookie.value
        assert len(session) >= 40
        # Only a hash of the session id is stored.
        found = await rx.store.lookup_session(token_hash(session), time.time())
        assert found is not None and found.user == "ops" and found.role == "admin"
        assert await rx.store.lookup_session(session, time.time()) is None

        status, html = await page(s, rx.url + "/")
        assert status == 200 and 'id="user">ops<' in html

        # Another receiver process on the same database serves the same session.
        other = await start_receiver(database_url, tmp_path / "media2")
        try:
            async with aiohttp.ClientSession(cookies={COOKIE: session}) as s2:
                status, html = await page(s2, other.url + "/")
                assert status == 200 and 'id="user">ops<' in html
        finally:
            await stop_receiver(other)

        status, _, _ = await form(s, rx.url + "/logout", {}, csrf_of(html))
        assert status == 303
        assert await rx.store.lookup_session(token_hash(session), time.time()) is None, "logout deletes it"
    async with aiohttp.ClientSession(cookies={COOKIE: session}) as s3:
        status, _ = await page(s3, rx.url + "/")
        assert status == 303, "the old cookie no longer works"


async def test_secure_cookie_over_tls_only_from_a_trusted_proxy(database_url: str, tmp_path: Path) -> None:
    for trust, secure in ((False, False), (True, True)):
        rx = await start_receiver(database_url, tmp_path / "media", dashboard=DashboardSection(trust_forwarded=trust))
        try:
            await rx.store.put_user("ops", "admin", hash_password(ADMIN_PASSWORD), time.time())
            async with (
                browser_session() as s,
                s.post(
                    rx.url + "/login",
                    data={"user": "ops", "password": ADMIN_PASSWORD},
                    headers={"X-Forwarded-Proto": "https"},
                    allow_redirects=False,
                ) as r,
            ):
                assert r.status == 303
                assert bool(r.cookies[COOKIE]["secure"]) is secure
        finally:
            await stop_receiver(rx)


async def test_failed_logins_are_throttled_and_counted(tmp_path: Path) -> None:
    rx = await start_receiver(
        f"sqlite:///{tmp_path / 'rx.db'}", tmp_path / "media", dashboard=DashboardSection(login_free_failures=1)
    )
    try:
        await rx.store.put_user("ops", "admin", hash_password(ADMIN_PASSWORD), time.time())
        async with browser_session() as s:
            for _ in range(2):
                assert (await log_in(s, rx.url, "ops", "wrong")).status == 401
            r = await log_in(s, rx.url, "ops", ADMIN_PASSWORD)
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 1, "even the right password waits"
        logins = rx.receiver.ctx.metrics.logins
        assert logins.labels("failure")._value.get() == 2 and logins.labels("throttled")._value.get() == 1
    finally:
        await stop_receiver(rx)


async def test_forms_need_the_csrf_token_and_the_same_origin(rx: RunningReceiver) -> None:
    async with browser_session() as s:
        async with s.post(
            rx.url + "/login",
            data={"user": "ops", "password": ADMIN_PASSWORD},
            headers={"Sec-Fetch-Site": "cross-site"},
            allow_redirects=False,
        ) as r:
            assert r.status == 403 and COOKIE not in r.cookies, "another site cannot log the browser in"
        await log_in(s, rx.url, "ops", ADMIN_PASSWORD)
        _, html = await page(s, rx.url + "/")
        token = csrf_of(html)
        status, body, _ = await form(s, rx.url + "/poles", {"pole_id": "p-x"}, None)
        assert status == 403 and "missing CSRF token" in body
        status, body, _ = await form(s, rx.url + "/poles", {"pole_id": "p-x"}, token[::-1])
        assert status == 403 and "wrong CSRF token" in body
        async with s.post(
            rx.url + "/poles",
            data={"pole_id": "p-x", FORM_FIELD: token},
            headers={"Origin": "http://evil.example"},
            allow_redirects=False,
        ) as r:
            assert r.status == 403
        assert await rx.store.get_pole("p-x") is None
        status, body, _ = await form(s, rx.url + "/poles", {"pole_id": "p-x"}, token)
        assert status == 201 and await rx.store.get_pole("p-x") is not None


async def test_readers_see_no_admin_forms_and_may_not_post_them(rx: RunningReceiver) -> None:
    async with browser_session() as s:
        await log_in(s, rx.url, "viewer", READER_PASSWORD)
        status, html = await page(s, rx.url + "/")
        assert status == 200 and 'id="register"' not in html
        status, pole_html = await page(s, rx.url + "/poles/pole-1")
        assert status == 200 and 'id="config-form"' not in pole_html and 'id="revoke"' not in pole_html
        token = csrf_of(html)  # the logout form's
        for path, fields in (
            ("/poles", {"pole_id": "p-r"}),
            ("/poles/pole-1/revoke", {}),
            ("/poles/pole-1/config", {"overlay": '{"uplink": {"linger_s": 2.0}}'}),
        ):
            status, body, _ = await form(s, rx.url + path, fields, token)
            assert status == 403 and "Only an admin" in body, path
        assert await rx.store.get_pole("p-r") is None
        pole = await rx.store.get_pole("pole-1")
        assert pole is not None and pole.revoked_at is None and pole.config_target == "0"


async def test_register_shows_the_token_once_and_names_bad_fields(rx: RunningReceiver) -> None:
    async with browser_session() as s:
        await log_in(s, rx.url, "ops", ADMIN_PASSWORD)
        _, html = await page(s, rx.url + "/")
        token = csrf_of(html)
        status, body, _ = await form(s, rx.url + "/poles", {"pole_id": "p-9", "lat": "95", "lon": "4"}, token)
        assert status == 400 and "location.lat" in body and 'value="95"' in body
        status, body, _ = await form(s, rx.url + "/poles", {"pole_id": "p-9", "lat": "north", "lon": "4"}, token)
        assert status == 400 and "location.lat" in body
        fields = {"pole_id": "p-9", "name": "Dam", "lat": "52.37", "lon": "4.89", "tags": "north, pilot"}
        status, body, headers = await form(s, rx.url + "/poles", fields, token)
        assert status == 201 and headers["Cache-Control"] == "no-store"
        shown = re.search(r'<pre class="token" id="token">([^<]+)</pre>', body)
        assert shown is not None
        info = await rx.store.lookup_token(token_hash(shown.group(1)))
        assert info is not None and info.role == "pole" and info.pole_id == "p-9"
        pole = await rx.store.get_pole("p-9")
        assert pole is not None and pole.tags == ["north", "pilot"] and pole.lat == 52.37
        status, body, _ = await form(s, rx.url + "/poles", fields, token)
        assert status == 409 and "exists already" in body
        status, html = await page(s, rx.url + "/")
        assert 'id="count-offline">2 offline<' in html, "the fleet's figures, all pages"
        status, html = await page(s, rx.url + "/?tag=north")
        assert 'data-pole="p-9"' in html and 'data-pole="pole-1"' not in html
        assert "<circle" in html, "a pole with a location is on the map"
        status, html = await page(s, rx.url + "/?online=maybe")
        assert status == 400 and "online" in html


async def test_config_overlay_form_names_the_key_and_keeps_history(rx: RunningReceiver) -> None:
    async with browser_session() as s:
        await log_in(s, rx.url, "ops", ADMIN_PASSWORD)
        _, html = await page(s, rx.url + "/poles/pole-1")
        token = csrf_of(html)
        bad = '{"uplink": {"max_batch_events": -3}}'
        status, body, _ = await form(s, rx.url + "/poles/pole-1/config", {"overlay": bad}, token)
        assert status == 400 and 'id="config-problems"' in body and "uplink.max_batch_events" in body
        assert "max_batch_events&#34;: -3" in body, "the text typed stays in the form"
        status, body, _ = await form(s, rx.url + "/poles/pole-1/config", {"overlay": "uplink = {"}, token)
        assert status == 400 and "not valid TOML" in body
        status, _, headers = await form(
            s, rx.url + "/poles/pole-1/config", {"overlay": "[uplink]\nlinger_s = 2.5"}, token
        )
        assert status == 303
        pole = await rx.store.get_pole("pole-1")
        assert pole is not None and pole.config_target != "0"
        assert headers["Location"] == f"/poles/pole-1?saved={pole.config_target}"
        _, html = await page(s, rx.url + headers["Location"])
        assert f'id="config-target">{pole.config_target}<' in html and "linger_s" in html
        status, _, _ = await form(s, rx.url + "/poles/pole-1/config", {"overlay": ""}, token)
        assert status == 303
        history = await rx.store.config_history("pole", "pole-1", 10)
        assert [h.overlay for h in history] == [None, {"uplink": {"linger_s": 2.5}}]
        assert history[1].changed_by == "ops"
        _, html = await page(s, rx.url + "/poles/pole-1")
        assert html.count("<tr><td>") >= 2 and "removed" in html

        status, _, _ = await form(s, rx.url + "/poles/pole-1/revoke", {}, token)
        assert status == 303
        pole = await rx.store.get_pole("pole-1")
        assert pole is not None and pole.revoked_at is not None
        status, body, _ = await form(s, rx.url + "/poles/nope/revoke", {}, token)
        assert status == 404


async def test_pages_escape_what_poles_and_admins_send(rx: RunningReceiver) -> None:
    evil = "<script>alert(1)</script>"
    await rx.store.update_pole("pole-1", PoleChanges({"name": evil}))
    body = batch("pole-1", [event(1, type_="presence", note=evil)], {"software_version": evil})
    code, _ = await post(rx.url, body, rx.tokens["pole-1"])
    assert code == 200
    async with browser_session() as s:
        await log_in(s, rx.url, "ops", ADMIN_PASSWORD)
        for path in ("/", "/poles/pole-1"):
            async with s.get(rx.url + path) as r:
                html = await r.text()
                assert r.status == 200
                assert evil not in html and "&lt;script&gt;" in html
                csp = r.headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "unsafe-inline" not in csp
                assert r.headers["X-Frame-Options"] == "DENY"
        assert "<script>" not in re.sub(r'<script src="/static/dashboard.js" defer></script>', "", html)


async def test_thumbnails_behind_the_session(rx: RunningReceiver) -> None:
    sha = hashlib.sha256(JPEG).hexdigest()
    headers = {"Authorization": f"Bearer {rx.tokens['pole-1']}", "Content-Type": "image/jpeg"}
    async with aiohttp.ClientSession() as s, s.put(f"{rx.url}/v1/media/{sha}", data=JPEG, headers=headers) as r:
        assert r.status == 201
    snapshot = {**event(1, type_="presence"), "media": [sha]}
    code, _ = await post(rx.url, batch("pole-1", [snapshot]), rx.tokens["pole-1"])
    assert code == 200
    async with aiohttp.ClientSession() as s, s.get(f"{rx.url}/media/{sha}", allow_redirects=False) as r:
        assert r.status == 303, "no session, no picture"
    async with browser_session() as s:
        await log_in(s, rx.url, "viewer", READER_PASSWORD)
        _, html = await page(s, rx.url + "/poles/pole-1")
        assert f'src="/media/{sha}"' in html
        async with s.get(f"{rx.url}/media/{sha}") as r:
            assert r.status == 200 and r.content_type == "image/jpeg" and await r.read() == JPEG
        async with s.get(f"{rx.url}/media/{'0' * 64}") as r:
            assert r.status == 404
        async with s.get(f"{rx.url}/media/not-a-hash") as r:
            assert r.status == 400


async def test_add_user_command(tmp_path: Path, smartpole_cmd: list[str], child_env: dict[str, str]) -> None:
    import subprocess

    db = tmp_path / "rx.db"
    config = tmp_path / "receiver.toml"
    config.write_text(f'[receiver]\ndatabase_url = "sqlite:///{db}"\nmedia_dir = "{tmp_path / "media"}"\n')
    base = [*smartpole_cmd, "receiver", "--config", str(config), "add-user"]

    def add_user(role: str, password: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*base, "ana", "--role", role, "--password", password], env=child_env, capture_output=True
        )

    done = add_user("admin", "short")
    assert done.returncode == 2 and b"at least 8" in done.stderr
    done = add_user("admin", "long enough 1")
    assert done.returncode == 0 and b"created" in done.stdout
    done = add_user("reader", "long enough 2")
    assert done.returncode == 0 and b"updated" in done.stdout
    rx = await start_receiver(f"sqlite:///{db}", tmp_path / "media")
    try:
        user = await rx.store.get_user("ana")
        assert user is not None and user.role == "reader" and "long enough" not in user.password_hash
        async with browser_session() as s:
            assert (await log_in(s, rx.url, "ana", "long enough 1")).status == 401
            assert (await log_in(s, rx.url, "ana", "long enough 2")).status == 303
    finally:
        await stop_receiver(rx)


async def test_charts_draw_the_last_hours_from_the_rollups(rx: RunningReceiver) -> None:
    now = time.time()
    token_2 = await rx.add_pole("pole-2")
    events = [
        event(1, type_="air_quality", priority="telemetry", pm2_5=12.5, pm10=20.0, samples=60),
        event(2, type_="speed", priority="telemetry", speed_kmh=42.0, over_limit=False),
        event(3, type_="speed", priority="telemetry", speed_kmh=61.0, over_limit=True),
        event(4, type_="presence"),
    ]
    events[0]["ts"] = now - 2 * 3600
    code, _ = await post(rx.url, batch("pole-1", events), rx.tokens["pole-1"])
    assert code == 200
    code, _ = await post(rx.url, batch("pole-2", [event(1, type_="air_quality", pm2_5=30.0, pm10=41.0)]), token_2)
    assert code == 200
    async with browser_session() as s:
        await log_in(s, rx.url, "viewer", READER_PASSWORD)
        status, html = await page(s, rx.url + "/charts")
        assert status == 200
        assert html.count('<svg class="chart"') == 4, "events, PM2.5, PM10 and speed all have data"
        assert "air_quality" in html and "presence" in html and ">pole-2<" in html
        assert "pole-1" in html and "12.5 µg/m³" in html and "30 µg/m³" in html
        assert "2 vehicle passes, 1 over their limit" in html
        status, html = await page(s, rx.url + "/charts?pole=pole-2&hours=6")
        assert status == 200 and "pole-1" not in html
        assert html.count('<svg class="chart"') == 3 and "Nothing in these hours" in html, "pole-2 has no speeds"
        status, html = await page(s, rx.url + "/charts?hours=5")
        assert status == 400 and "hours: one of" in html
        status, html = await page(s, rx.url + "/charts?tag=%3Cb%3E")
        assert status == 400 and "<b>" not in html


def test_chart_geometry_and_the_series_it_keeps() -> None:
    from receiver.dashboard import svg

    since, until = 100 * 3600, 124 * 3600
    counts = {f"type{n}": {since + 3600 * n: float(n + 1)} for n in range(8)}
    chart = svg.line_chart("t", "events", counts, since, until, additive=True)
    assert [line.name for line in chart.lines] == ["type7", "type6", "type5", "type4", "type3", "other"]
    assert chart.lines[-1].dots and sum(1 for d in chart.lines[-1].dots) == 3, "types 0, 1 and 2 summed"
    assert "3 smaller series" in chart.note
    measured = svg.line_chart("t", "km/h", counts, since, until, additive=False)
    assert len(measured.lines) == 6 and "2 more not drawn" in measured.note
    (dot,) = chart.lines[0].dots
    assert chart.left < dot.x < chart.right and chart.top <= dot.y < chart.bottom
    assert [t.label for t in chart.y_ticks] == ["0", "2", "4", "6", "8", "10"], "8 rounds up to 10"
    assert dot.y == round(chart.top + (chart.bottom - chart.top) * 0.2, 1)
    assert len(chart.x_ticks) == 8 and chart.x_ticks[0].label == "04:00"
    week = svg.line_chart("t", "events", {}, since, since + 168 * 3600, additive=True)
    assert week.empty and all(len(t.label) == 5 and "-" in t.label for t in week.x_ticks)


def test_forwarded_headers_count_only_when_trusted() -> None:
    from aiohttp.test_utils import make_mocked_request

    from receiver.dashboard.auth import DashboardAuth

    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9, 198.51.100.7"}
    request = make_mocked_request("GET", "/", headers=headers)
    trusted = DashboardAuth(None, DashboardSection(trust_forwarded=True))  # type: ignore[arg-type]
    plain = DashboardAuth(None, DashboardSection())  # type: ignore[arg-type]
    try:
        assert trusted.secure(request) and trusted.client(request) == "198.51.100.7", "the proxy's own entry"
        assert not plain.secure(request) and plain.client(request) != "198.51.100.7"
    finally:
        trusted.close()
        plain.close()


async def test_tag_overlay_form_reaches_the_poles_of_the_tag(rx: RunningReceiver) -> None:
    await rx.store.update_pole("pole-1", PoleChanges({}, ["north"]))
    async with browser_session() as s:
        await log_in(s, rx.url, "viewer", READER_PASSWORD)
        status, html = await page(s, rx.url + "/tags/north")
        assert status == 200 and 'data-pole="pole-1"' in html and 'id="config-form"' not in html
        status, body, _ = await form(
            s, rx.url + "/tags/north/config", {"overlay": "[uplink]\nlinger_s = 1.0"}, csrf_of(html)
        )
        assert status == 403
    async with browser_session() as s:
        await log_in(s, rx.url, "ops", ADMIN_PASSWORD)
        _, html = await page(s, rx.url + "/tags/north")
        token = csrf_of(html)
        status, body, _ = await form(
            s, rx.url + "/tags/north/config", {"overlay": '{"uplink": {"linger_s": "x"}}'}, token
        )
        assert status == 400 and "uplink.linger_s" in body
        status, _, headers = await form(
            s, rx.url + "/tags/north/config", {"overlay": "[uplink]\nlinger_s = 1.0"}, token
        )
        assert status == 303 and headers["Location"].startswith("/tags/north?saved=")
        pole = await rx.store.get_pole("pole-1")
        assert pole is not None and headers["Location"].endswith(pole.config_target) and pole.config_target != "0"
        _, html = await page(s, rx.url + "/poles/pole-1")
        assert "layer tag north" in html and 'href="/tags/north"' in html
        status, _ = await page(s, rx.url + "/tags/bad%20tag")
        assert status == 400


async def test_a_receiver_without_its_dashboard_serves_only_the_api(tmp_path: Path) -> None:
    rx = await start_receiver(
        f"sqlite:///{tmp_path / 'rx.db'}", tmp_path / "media", dashboard=DashboardSection(enabled=False)
    )
    try:
        async with aiohttp.ClientSession() as s:
            for path in ("/", "/login", "/static/dashboard.css", "/charts"):
                async with s.get(rx.url + path, allow_redirects=False) as r:
                    assert r.status == 404, path
            async with s.get(rx.url + "/health") as r:
                assert r.status == 200
    finally:
        await stop_receiver(rx)


async def test_the_map_draws_every_pole_the_filters_leave(rx: RunningReceiver) -> None:
    for n in range(3):
        await rx.store.register_pole(f"m-{n}", token_hash(f"t{n}"), time.time(), None, 52.0 + n / 100, 4.0, ["map"])
    await rx.store.register_pole("m-x", token_hash("tx"), time.time(), None, None, None, ["map"])
    positions = await rx.store.pole_positions(PoleQuery(tag="map", limit=10))
    assert [p.pole_id for p in positions] == ["m-0", "m-1", "m-2", "m-x"]
    async with browser_session() as s:
        await log_in(s, rx.url, "viewer", READER_PASSWORD)
        _, html = await page(s, rx.url + "/?tag=map&limit=1")
        assert html.count("<tr data-pole=") == 1 and 'id="tag-config"' in html
        assert html.count('<circle class="pole') == 3 and "1 pole(s) without a location" in html
        _, html = await page(s, rx.url + "/?online=true")
        assert "<circle" not in html, "no pole is online"


async def test_a_pole_revoked_on_the_dashboard_is_refused_at_once(rx: RunningReceiver) -> None:
    """The receiver keeps pole tokens it looked up for a few seconds; a revocation made here must
    not wait for that (as one made through the API does not)."""
    pole_token = await rx.add_pole("p-revoked")
    assert (await post(rx.url, batch("p-revoked", [event(1)]), pole_token))[0] == 200  # now cached
    async with browser_session() as s:
        await log_in(s, rx.url, "ops", ADMIN_PASSWORD)
        _, html = await page(s, rx.url + "/")
        status, _, _ = await form(s, rx.url + "/poles/p-revoked/revoke", {}, csrf_of(html))
        assert status == 303
    assert (await post(rx.url, batch("p-revoked", [event(2)]), pole_token))[0] == 401
