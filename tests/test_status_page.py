"""The technicians' status page in a real headless Chromium, against a real daemon process.

The browser logs in, watches values change as events flow in through the ingest
API, clicks "Sync now" and sees the uplink deliver; a wrong password is refused.
Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from gateway.web.login import hash_password
from tests.conftest import start_receiver, stop_receiver
from tests.helpers.browser import ARTIFACTS, chromium
from tests.helpers.pole import PoleProcess, free_port

PASSWORD = "correct horse battery"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    with chromium(tmp_path / "chromium") as driver:
        yield driver


def text(driver: webdriver.Chrome, key: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f'[data-k="{key}"]').text


def wait_text(driver: webdriver.Chrome, key: str, predicate, timeout: float = 20) -> str:  # type: ignore[no-untyped-def]
    WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: predicate(text(d, key)))
    return text(driver, key)


async def test_login_watch_and_sync_now(browser: webdriver.Chrome, tmp_path: Path) -> None:
    port = free_port()
    rx = await start_receiver(f"sqlite:///{tmp_path / 'rx.db'}", tmp_path / "media", port=port)
    token = await rx.add_pole("pole-1")
    pole = PoleProcess(
        tmp_path,
        f"http://127.0.0.1:{port}",
        token,
        # Events wait in the outbox until "Sync now": nothing else sends them for ten minutes.
        uplink={"linger_s": 600.0, "heartbeat_s": 600.0},
        http={"password_hash": hash_password(PASSWORD)},
    )
    await asyncio.to_thread(pole.start)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        await asyncio.to_thread(browser.get, pole.url + "/")
        assert browser.current_url.endswith("/login"), "the page is behind a login"

        def log_in(password: str, lands_on: str) -> None:
            WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "password"))
            field = browser.find_element(By.ID, "password")
            field.clear()
            field.send_keys(password)
            browser.find_element(By.ID, "login").click()
            WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, lands_on))

        await asyncio.to_thread(log_in, "wrong password", "p.error")
        assert "failed=1" in browser.current_url
        assert "Wrong password" in browser.page_source
        async with aiohttp.ClientSession() as s, s.get(pole.url + "/status.json") as r:
            assert r.status == 401, "no session, no status"

        await asyncio.to_thread(log_in, PASSWORD, '[data-k="pole_id"]')
        assert text(browser, "pole_id") == "pole-1"
        assert text(browser, "outbox_total") == "0"

        async with aiohttp.ClientSession(headers=pole.headers) as s:
            for i in range(5):
                async with s.post(pole.url + "/v1/events", json={"type": "door_open", "data": {"cabinet": i}}) as r:
                    assert r.status == 201
        await asyncio.to_thread(wait_text, browser, "outbox_total", lambda t: t == "5")
        rows = browser.find_elements(By.CSS_SELECTOR, "#events tr")
        assert len(rows) == 5 and "door_open" in rows[0].text
        assert text(browser, "uplink_sent").startswith("0 events"), "only a heartbeat so far"
        browser.save_screenshot(str(ARTIFACTS / "status-page-before-sync.png"))

        # A page on another port of the same host submits a form to the pole: the browser sends the
        # session cookie along (same site), and the pole refuses it (another origin, no token).
        attacker = await serve_attacker_page(pole.url + "/actions/sync-now")
        try:
            await asyncio.to_thread(browser.get, attacker.url)
            await asyncio.to_thread(
                WebDriverWait(browser, 20).until, lambda d: d.current_url.startswith(pole.url + "/actions/")
            )
            assert "cross-site request refused" in browser.page_source
        finally:
            await attacker.runner.cleanup()
        await asyncio.to_thread(browser.get, pole.url + "/")
        await asyncio.to_thread(wait_text, browser, "outbox_total", lambda t: t == "5")
        assert text(browser, "uplink_sent").startswith("0 events"), "the forged form did not sync"

        await asyncio.to_thread(browser.find_element(By.ID, "sync-now").click)
        await asyncio.to_thread(wait_text, browser, "outbox_total", lambda t: t == "0")
        await asyncio.to_thread(wait_text, browser, "uplink_sent", lambda t: t.startswith("5 events"))
        assert browser.find_element(By.ID, "action-result").text == "sync started"
        assert len(await rx.all_events()) == 5
        browser.save_screenshot(str(ARTIFACTS / "status-page.png"))

        await asyncio.to_thread(browser.find_element(By.CSS_SELECTOR, "form.logout button").click)
        await asyncio.to_thread(WebDriverWait(browser, 20).until, lambda d: d.current_url.endswith("/login"))
    finally:
        await asyncio.to_thread(pole.stop)
        await stop_receiver(rx)


class AttackerSite:
    def __init__(self, runner: web.AppRunner, url: str) -> None:
        self.runner = runner
        self.url = url


async def serve_attacker_page(target: str) -> AttackerSite:
    """A page on another port of 127.0.0.1 that submits a form to ``target`` as soon as it loads."""
    page = (
        f'<!doctype html><form method="post" action="{target}"><input name="csrf_token" value="guess"></form>'
        "<script>document.forms[0].submit()</script>"
    )

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return AttackerSite(runner, f"http://127.0.0.1:{runner.addresses[0][1]}/")


async def test_open_endpoints_and_bearer_only_for_ingest(tmp_path: Path) -> None:
    pole = PoleProcess(tmp_path, "http://127.0.0.1:9", "unused", uplink={"kind": "simulated"})
    await asyncio.to_thread(pole.start)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(pole.url + "/healthz") as r:
                assert r.status == 200 and (await r.json())["status"] == "ok"
            async with s.get(pole.url + "/metrics") as r:
                assert r.status == 200 and "smartpole_outbox_bytes" in await r.text()
            async with s.post(pole.url + "/v1/events", json={"type": "x"}) as r:
                assert r.status == 401
            async with s.get(pole.url + "/status.json", headers=pole.headers) as r:
                assert r.status == 401, "the ingest token opens the ingest API only"
            async with s.post(pole.url + "/actions/sync-now", headers=pole.headers) as r:
                assert r.status == 401
            started = time.monotonic()
            async with s.post(pole.url + "/login", data={"password": "anything"}, allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "/login?failed=1"
            assert time.monotonic() - started >= 0.9, "failed logins are slowed down"
    finally:
        await asyncio.to_thread(pole.stop)
