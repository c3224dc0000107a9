"""The dashboard in a real headless Chromium, with a real pole daemon syncing to the receiver.

An admin logs in, registers two poles with the form (one of them then runs as a real
``smartpole run`` process with the street video as its camera), watches it come online in
the fleet, opens the redacted thumbnail of one of its events, changes its configuration
overlay and sees the pole report that it runs the new version, then looks at the charts. Screenshots land in
test-artifacts/ (docs/dashboard.png is the demo's fleet page, taken the same way).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from httpkit.passwords import hash_password
from tests.conftest import ROOT, start_receiver, stop_receiver
from tests.helpers.browser import ARTIFACTS, chromium
from tests.helpers.pole import PoleProcess, free_port

PASSWORD = "city operator 1"
STREET = ROOT / "smartpole" / "media" / "street.avi"
CAMERA = f'\n[[cameras]]\nname = "street"\nsource = "{STREET}"\nkind = "file"\nat_end = "loop"\n'


def until(driver: webdriver.Chrome, check: Callable[[webdriver.Chrome], object], timeout: float, refresh: bool) -> None:
    """Wait for ``check``, reloading the page every second when ``refresh`` (the pages are server-rendered)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check(driver):
                return
        except Exception:  # an element not there yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"not seen in {timeout}s on {driver.current_url}")
        time.sleep(1.0)
        if refresh:
            driver.refresh()


def register(driver: webdriver.Chrome, url: str, pole_id: str, name: str, lat: str, lon: str, tags: str) -> str:
    driver.get(url + "/")
    for field, value in (("new-pole-id", pole_id), ("new-name", name), ("new-lat", lat), ("new-lon", lon)):
        driver.find_element(By.ID, field).send_keys(value)
    driver.find_element(By.ID, "new-tags").send_keys(tags)
    driver.find_element(By.ID, "register-submit").click()
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "token"))
    return driver.find_element(By.ID, "token").text.strip()


def state_of(driver: webdriver.Chrome, pole_id: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f'tr[data-pole="{pole_id}"] [data-k="state"]').text


def scenario(driver: webdriver.Chrome, url: str, tmp_path: Path) -> None:
    driver.get(url + "/")
    assert driver.current_url.endswith("/login")
    driver.find_element(By.ID, "user-name").send_keys("ops")
    driver.find_element(By.ID, "password").send_keys("not the password")
    driver.find_element(By.ID, "login").click()
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "login-error"))
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login").click()
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "fleet"))
    assert driver.find_element(By.ID, "user").text == "ops"

    token = register(driver, url, "street-1", "Damrak", "52.3745", "4.8980", "centre")
    register(driver, url, "harbour-2", "IJ ferry", "52.3810", "4.9000", "north")
    driver.get(url + "/")
    assert state_of(driver, "street-1") == "offline" and state_of(driver, "harbour-2") == "offline"

    (tmp_path / "pole").mkdir()
    pole = PoleProcess(
        tmp_path / "pole", url, token, extra_toml=CAMERA, pole={"id": "street-1"}, uplink={"heartbeat_s": 1.0}
    )
    pole.start(60)
    try:
        until(driver, lambda d: state_of(d, "street-1") == "online", 60, refresh=True)
        assert state_of(driver, "harbour-2") == "offline"
        driver.save_screenshot(str(ARTIFACTS / "dashboard-fleet.png"))

        driver.get(url + "/poles/street-1")
        until(
            driver,
            lambda d: d.execute_script("const i = document.querySelector('img.thumb'); return i && i.naturalWidth > 0"),
            90,
            refresh=True,
        )
        driver.save_screenshot(str(ARTIFACTS / "dashboard-pole.png"))
        thumb = driver.find_element(By.CSS_SELECTOR, "a.thumb-link")
        media_url = thumb.get_attribute("href")
        assert media_url and re.search(r"/media/[0-9a-f]{64}$", media_url)
        thumb.click()
        WebDriverWait(driver, 20).until(lambda d: d.current_url == media_url)
        assert driver.execute_script("return document.contentType") == "image/jpeg"
        driver.save_screenshot(str(ARTIFACTS / "dashboard-thumbnail.png"))
        driver.back()

        before = driver.find_element(By.ID, "config-target").text
        text = driver.find_element(By.ID, "overlay-text")
        text.clear()
        text.send_keys("[uplink]\nmax_batch_events = -1\n")
        driver.find_element(By.ID, "config-submit").click()
        WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "config-problems"))
        assert "uplink.max_batch_events" in driver.find_element(By.ID, "config-problems").text
        text = driver.find_element(By.ID, "overlay-text")
        text.clear()
        text.send_keys("[uplink]\nmax_batch_events = 250\n")
        driver.find_element(By.ID, "config-submit").click()
        WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "config-saved"))
        target = driver.find_element(By.ID, "config-target").text
        assert target != before and target in driver.find_element(By.ID, "config-saved").text
        until(
            driver,
            lambda d: (
                d.find_element(By.ID, "config-applied").text == target
                and d.find_element(By.ID, "config-state").text == "in sync"
            ),
            60,
            refresh=True,
        )
        driver.save_screenshot(str(ARTIFACTS / "dashboard-config.png"))

        driver.find_element(By.LINK_TEXT, "Charts").click()
        WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg.chart circle"))
        assert "presence" in driver.find_element(By.CSS_SELECTOR, "p.legend").text
        driver.save_screenshot(str(ARTIFACTS / "dashboard-charts.png"))
    finally:
        pole.stop()


async def test_operator_watches_a_real_pole_and_configures_it(tmp_path: Path) -> None:
    port = free_port()
    rx = await start_receiver(f"sqlite:///{tmp_path / 'rx.db'}", tmp_path / "media", port=port, online_window_s=5.0)
    await rx.store.put_user("ops", "admin", hash_password(PASSWORD), time.time())
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with chromium(tmp_path / "chromium") as driver:
            await asyncio.to_thread(scenario, driver, rx.url, tmp_path)
    finally:
        await stop_receiver(rx)
