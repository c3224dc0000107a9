"""TLS by default: an uplink URL without TLS to a host that is not this machine is refused, unless
``allow_insecure = true`` says so on purpose, and then the log and the status page say it too."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from pydantic import ValidationError

from gateway.config import PoleConfig
from gateway.configfile import ConfigError, load_config
from gateway.web.login import hash_password
from sync.transport import insecure_url_problem
from sync.uplink.base import UplinkConfig
from tests.helpers.pole import PoleProcess

PASSWORD = "tls-rule-password"


@pytest.mark.parametrize(
    "url",
    [
        "https://receiver.example.org",
        "http://127.0.0.1:8480",
        "http://127.9.9.9",
        "http://localhost:8480",
        "http://[::1]:8480",
        "HTTP://LOCALHOST",
        "https://10.0.0.5",
    ],
)
def test_tls_or_this_machine_is_fine(url: str) -> None:
    assert insecure_url_problem(url) is None
    UplinkConfig(url=url)


@pytest.mark.parametrize(
    "url", ["http://receiver.example.org", "http://10.0.0.5:8480", "http://[2001:db8::1]/", "http://localhost.evil.org"]
)
def test_cleartext_to_another_host_needs_allow_insecure(url: str) -> None:
    problem = insecure_url_problem(url)
    assert problem is not None and "https://" in problem and "allow_insecure" in problem
    with pytest.raises(ValidationError) as caught:
        UplinkConfig(url=url)
    assert caught.value.errors()[0]["loc"] == ("url",)
    assert UplinkConfig(url=url, allow_insecure=True).insecure_warning() is not None


def test_other_schemes_and_broker_urls() -> None:
    assert insecure_url_problem("ftp://receiver.example.org") is not None
    assert insecure_url_problem("mqtts://broker.example.org:8883", secure=("mqtts",), plain=("mqtt",)) is None
    assert insecure_url_problem("mqtt://broker.example.org", secure=("mqtts",), plain=("mqtt",)) is not None
    assert insecure_url_problem("mqtt://127.0.0.1:1883", secure=("mqtts",), plain=("mqtt",)) is None


def test_the_mqtt_uplink_and_the_receivers_consumer_follow_the_same_rule() -> None:
    from receiver.config import MqttSection

    assert UplinkConfig(kind="mqtt", url="mqtts://broker.example.org").insecure_warning() is None
    assert UplinkConfig(kind="mqtt", url="mqtt://127.0.0.1:1883").insecure_warning() is None
    with pytest.raises(ValidationError, match="without TLS"):
        UplinkConfig(kind="mqtt", url="mqtt://broker.example.org")
    with pytest.raises(ValidationError, match="mqtts://"):
        UplinkConfig(kind="mqtt", url="https://broker.example.org")
    allowed = UplinkConfig(kind="mqtt", url="mqtt://broker.example.org", allow_insecure=True)
    assert "without TLS" in (allowed.insecure_warning() or "")
    with pytest.raises(ValidationError, match="without TLS"):
        MqttSection(url="mqtt://broker.example.org")
    assert MqttSection(url="mqtt://broker.example.org", allow_insecure=True).insecure_warning()
    assert MqttSection(url="mqtts://broker.example.org").insecure_warning() is None


def test_check_config_refuses_it(tmp_path: Path) -> None:
    path = tmp_path / "pole.toml"
    path.write_text('[uplink]\nurl = "http://receiver.example.org:8480"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, PoleConfig, env={})
    assert caught.value.problems[0].startswith("uplink.url: ")


async def test_allowed_insecure_uplink_is_said_in_the_log_and_on_the_page(tmp_path: Path) -> None:
    pole = PoleProcess(
        tmp_path,
        "http://192.0.2.10:8480",  # TEST-NET-1: nothing answers; what matters is that it is not this machine
        "unused",
        uplink={"allow_insecure": True, "timeout_s": 0.2},
        http={"password_hash": hash_password(PASSWORD)},
    )
    await asyncio.to_thread(pole.start)
    try:
        warning = next(r for r in pole.log_records() if r.get("event") == "uplink_insecure")
        assert warning["level"] == "warning" and "192.0.2.10" in warning["problem"]
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            async with s.post(pole.url + "/login", data={"password": PASSWORD}) as r:
                assert r.status == 200
                assert "192.0.2.10" in await r.text(), "the page shows it from the start"
            async with s.get(pole.url + "/status.json") as r:
                assert "without TLS" in (await r.json())["view"]["text"]["uplink_security"]
    finally:
        await asyncio.to_thread(pole.stop)
