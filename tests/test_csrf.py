"""Cross-site requests cannot act on the status page: every POST of a logged-in technician needs
the session's CSRF token and must come from the page's own origin (Origin and Sec-Fetch-Site).
Browsers treat another port on the same host as the same *site*, so SameSite=Strict cookies go
along with such a form: only these checks stop it. A real daemon process."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

from tests.helpers.pole import standalone_pole

PASSWORD = "csrf-test-password"


async def test_status_page_posts_need_the_token_and_the_same_origin(tmp_path: Path) -> None:
    async with standalone_pole(tmp_path, PASSWORD) as pole:
        evil = "http://127.0.0.1:9999"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            async with s.post(pole.url + "/login", data={"password": PASSWORD}, headers={"Origin": evil}) as r:
                assert r.status == 403, "a login form on another origin (login CSRF)"
            async with s.post(pole.url + "/login", data={"password": PASSWORD}) as r:
                assert r.status == 200
                page = await r.text()
            found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
            assert found, "the page carries its session's token"
            token = found.group(1)
            assert f'name="csrf_token" value="{token}"' in page, "and so does every form"

            # What a page on another port makes a browser send: the cookie, a foreign Origin, same-site.
            forged = {"Origin": evil, "Sec-Fetch-Site": "same-site"}
            async with s.post(pole.url + "/actions/sync-now", headers=forged) as r:
                assert r.status == 403, await r.text()
            async with s.post(pole.url + "/actions/sync-now", data={"csrf_token": token}, headers=forged) as r:
                assert r.status == 403, "the token does not make a cross-site request acceptable"
            async with s.post(pole.url + "/actions/sync-now", headers={"Sec-Fetch-Site": "cross-site"}) as r:
                assert r.status == 403
            async with s.post(pole.url + "/actions/sync-now", headers={"Origin": pole.url}) as r:
                assert r.status == 403, "same origin, but no token"
            wrong = ("y" if token[0] == "x" else "x") + token[1:]  # never the real one by chance
            async with s.post(pole.url + "/actions/sync-now", headers={"X-CSRF-Token": wrong}) as r:
                assert r.status == 403, "a wrong token"
            async with s.post(pole.url + "/logout") as r:
                assert r.status == 403, "logging out needs the token too"

            own = {"Origin": pole.url, "Sec-Fetch-Site": "same-origin", "X-CSRF-Token": token}
            async with s.post(pole.url + "/actions/sync-now", headers=own) as r:
                assert r.status == 200 and (await r.json())["message"] == "sync started"
            async with s.post(pole.url + "/actions/sync-now", headers={"X-CSRF-Token": token}) as r:
                assert r.status == 200, "programs that send no Origin still work with the token"
            async with s.post(pole.url + "/logout", data={"csrf_token": token}, allow_redirects=False) as r:
                assert r.status == 302
            async with s.get(pole.url + "/status.json") as r:
                assert r.status == 401
