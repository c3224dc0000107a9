"""A configuration error never echoes a secret's value: not from check-config, not in a refused
SIGHUP reload's log line, not in the status page's reload reply. It says what is wrong instead."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
from pathlib import Path

import aiohttp

from tests.helpers.pole import standalone_pole

PASSWORD = "config-secrets-password"
NOT_A_HASH = "plaintext-Password-4711"
SHORT_TOKEN = "tiny-tok-99"


def test_check_config_names_the_secret_and_hides_its_value(
    tmp_path: Path, smartpole_cmd: list[str], child_env: dict[str, str]
) -> None:
    pole = tmp_path / "pole.toml"
    pole.write_text(
        f'[pole]\nid = "p1"\n[http]\npassword_hash = "{NOT_A_HASH}"\ningest_token = "{SHORT_TOKEN}"\n'
        "[uplink]\ntoken = 123456789\n"
    )
    result = subprocess.run(
        [*smartpole_cmd, "check-config", str(pole)], capture_output=True, text=True, env=child_env, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(f"{pole}: http.password_hash: ") and "hash-password" in line for line in lines), lines
    assert any(line.startswith(f"{pole}: http.ingest_token: ") and "16 characters" in line for line in lines), lines
    assert any(line.startswith(f"{pole}: uplink.token: ") and "string" in line for line in lines), lines
    for secret in (NOT_A_HASH, SHORT_TOKEN, "123456789"):
        assert secret not in result.stderr, result.stderr

    receiver = tmp_path / "receiver.toml"
    receiver.write_text('[receiver]\nport = "eighty"\n')
    result = subprocess.run(
        [*smartpole_cmd, "check-config", str(receiver)], capture_output=True, text=True, env=child_env, timeout=60
    )
    assert result.returncode == 2
    assert "(got 'eighty')" in result.stderr, "what is not a secret is still shown"


async def test_refused_reloads_hide_secret_values(tmp_path: Path) -> None:
    async with standalone_pole(tmp_path, PASSWORD) as pole:
        bad = re.sub(r'(?m)^ingest_token = ".*"$', f'ingest_token = "{SHORT_TOKEN}"', pole.config.read_text())
        bad = re.sub(r'(?m)^password_hash = ".*"$', f'password_hash = "{NOT_A_HASH}"', bad)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            async with s.post(pole.url + "/login", data={"password": PASSWORD}) as r:
                assert r.status == 200
                page = await r.text()
            pole.config.write_text(bad)
            csrf = _csrf(page)
            async with s.post(pole.url + "/actions/reload-config", headers=csrf) as r:
                reply = await r.text()
                assert r.status == 400, reply
            assert "http.password_hash" in reply and "http.ingest_token" in reply, reply
            assert NOT_A_HASH not in reply and SHORT_TOKEN not in reply, reply
        assert pole.proc is not None
        pole.proc.send_signal(signal.SIGHUP)
        await asyncio.to_thread(
            pole.wait_until, lambda: any(r.get("event") == "reload_refused" for r in pole.log_records())
        )
    log = pole.log.read_text()
    assert "http.password_hash" in log
    assert NOT_A_HASH not in log and SHORT_TOKEN not in log, log[-3000:]


def _csrf(page: str) -> dict[str, str]:
    """The page's CSRF token as the status page's script sends it, once the page has one."""
    marker = 'name="csrf-token" content="'
    if marker not in page:
        return {}
    start = page.index(marker) + len(marker)
    return {"X-CSRF-Token": page[start : page.index('"', start)]}
