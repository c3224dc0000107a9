"""``smartpole demo`` as a person runs it: the banner first, then a receiver with its dashboard
and two poles that both reach it, and a clean stop after ``--duration``."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from smartpole.demo import ADMIN, PASSWORD, POLES, RECEIVER_PORT


async def test_demo_shows_the_banner_the_dashboard_and_two_poles(tmp_path: Path, child_env: dict[str, str]) -> None:
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "smartpole.cli", "demo", "--workdir", str(tmp_path / "demo"), "--duration", "20"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=child_env,
        )
        try:
            url = f"http://127.0.0.1:{RECEIVER_PORT}"
            deadline = time.monotonic() + 18
            seen: dict[str, float | None] = {}
            while time.monotonic() < deadline:
                text = out.read_text(errors="replace")
                token = re.search(r"Bearer (spt_\S+)'", text)
                if token:
                    try:
                        async with (
                            aiohttp.ClientSession(headers={"Authorization": f"Bearer {token.group(1)}"}) as s,
                            s.get(url + "/v1/poles") as r,
                        ):
                            if r.status == 200:
                                seen = {p["pole_id"]: p["last_seen"] for p in (await r.json())["poles"]}
                    except aiohttp.ClientConnectionError:
                        pass
                if len(seen) == len(POLES) and all(seen.values()):
                    break
                await asyncio.sleep(0.5)
            assert set(seen) == {p.pole_id for p in POLES} and all(seen.values()), f"poles heard: {seen}"

            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as s:
                async with s.post(
                    url + "/login", data={"user": ADMIN, "password": PASSWORD}, allow_redirects=False
                ) as r:
                    assert r.status == 303
                async with s.get(url + "/") as r:
                    page = await r.text()
                    assert r.status == 200 and all(f'data-pole="{p.pole_id}"' in page for p in POLES)
        finally:
            code = await asyncio.to_thread(proc.wait, 60)
    text = out.read_text(errors="replace")
    assert code == 0, text[-3000:]
    first_lines = text.lstrip().splitlines()
    assert first_lines[0].startswith("SmartPole demo:"), "the banner comes first, before any log line"
    banner = text[: text.index("log:")]
    for expected in (f"user {ADMIN}, password {PASSWORD}", "status page  http://127.0.0.1:8470/", "curl -H"):
        assert expected in banner
