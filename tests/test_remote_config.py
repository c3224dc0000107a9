"""Remote configuration's models and files: what may change remotely, merging, versions, the
persisted overlay on the pole and ``check-config --effective``."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from gateway.remote import FetchError, LoadedConfig, RemoteConfigFetcher, load_effective, read_overlay, write_overlay
from gateway.remote_config import (
    EMPTY_VERSION,
    OverlayError,
    apply_overlay,
    effective_overlay,
    overlay_version,
    validate_overlay,
)
from sync.uplink.base import UplinkConfig

POLE_TOML = """
[pole]
id = "pole-7"
[paths]
state_dir = "{state}"
[uplink]
max_batch_events = 100
token = "spt_secret-in-the-file"
[[cameras]]
name = "cam0"
source = "simulated"
[vision.detection]
nms_iou = 0.4
"""


def problems(doc: Any) -> list[str]:
    with pytest.raises(OverlayError) as info:
        validate_overlay(doc)
    return info.value.problems


def test_only_remotely_changeable_keys_pass_and_every_problem_is_named() -> None:
    assert problems({"vision": {"detection": {"threshold": 1.5}}}) == [
        "vision.detection.threshold: Input should be less than 1 (got 1.5)"
    ]
    assert problems({"uplink": {"url": "https://x", "token": "t", "max_batch_events": 0}}) == [
        "uplink.max_batch_events: Input should be greater than or equal to 1 (got 0)",
        "uplink.url: may not be changed remotely (only in the pole's own file)",
        "uplink.token: a secret; secrets never travel in remote configuration",
    ]
    assert problems({"privacy": {"plates": {"secret": "x" * 16}}}) == [
        "privacy.plates.secret: a secret; secrets never travel in remote configuration"
    ]
    for key in ("pole", "paths", "http", "outbox", "sensors", "logging"):
        assert problems({key: {}}) == [f"{key}: may not be changed remotely (only in the pole's own file)"]
    assert problems({"vision": {"inference": {"threads": 1}}})[0].startswith("vision.inference: may not be changed")
    assert problems({"cameras": {"cam0": {"source": "x"}}})[0].startswith("cameras.cam0.source: may not be changed")
    assert problems({"colour": 1}) == ["colour: unknown key (not a setting here; check the spelling and the section)"]
    assert problems([1]) == ["(top level): an overlay is a table (a JSON object) of pole settings"]
    assert problems({"policy": {"redact": [{"path": "plate"}]}})[0].startswith("policy.redact.0.path:")


def test_an_overlay_keeps_only_the_keys_given_and_merges_tables_replacing_lists() -> None:
    overlay = validate_overlay({"vision": {"detection": {"threshold": 0.5}}, "cameras": {"cam0": {"fps": 5}}})
    assert overlay == {"vision": {"detection": {"threshold": 0.5}}, "cameras": {"cam0": {"fps": 5.0}}}
    zones = [{"name": "a", "polygon": [[0, 0], [1, 0], [1, 1]]}]
    merged = effective_overlay([{"vision": {"zones": zones, "detection": {"nms_iou": 0.3}}}, overlay])
    assert merged["vision"] == {"zones": zones, "detection": {"nms_iou": 0.3, "threshold": 0.5}}
    assert effective_overlay([{"vision": {"zones": zones}}, {"vision": {"zones": []}}]) == {"vision": {"zones": []}}
    assert overlay_version({}) == EMPTY_VERSION
    assert overlay_version({"a": {"b": 1, "c": 2}}) == overlay_version({"a": {"c": 2, "b": 1}}) != EMPTY_VERSION
    doc = {"cameras": [{"source": "simulated"}], "vision": {"detection": {"nms_iou": 0.4}}}
    applied = apply_overlay(doc, overlay)
    assert applied["cameras"] == [{"source": "simulated", "fps": 5.0}], "cam0 is the default camera name"
    assert applied["vision"]["detection"] == {"nms_iou": 0.4, "threshold": 0.5}
    assert doc["cameras"] == [{"source": "simulated"}], "the base is left as it was"
    with pytest.raises(OverlayError, match=r"cameras.cam9: this pole has no camera of that name \(it has 'cam0'\)"):
        apply_overlay(doc, {"cameras": {"cam9": {"fps": 5}}})


def pole_file(tmp_path: Path) -> Path:
    path = tmp_path / "pole.toml"
    path.write_text(POLE_TOML.format(state=tmp_path / "state"))
    return path


def test_the_persisted_overlay_is_applied_at_start_or_reported(tmp_path: Path) -> None:
    path = pole_file(tmp_path)
    loaded = load_effective(path)
    assert loaded.version == EMPTY_VERSION and loaded.error is None and loaded.config.uplink.max_batch_events == 100
    overlay = validate_overlay({"uplink": {"max_batch_events": 7}, "cameras": {"cam0": {"fps": 2}}})
    write_overlay(loaded.overlay_path, overlay, overlay_version(overlay))
    assert stat.S_IMODE(os.stat(loaded.overlay_path).st_mode) == 0o600
    assert read_overlay(loaded.overlay_path) == (overlay, overlay_version(overlay))
    loaded = load_effective(path)
    assert loaded.version == overlay_version(overlay) and loaded.error is None
    assert loaded.config.uplink.max_batch_events == 7 and loaded.config.cameras[0].fps == 2.0
    assert loaded.config.vision.detection.nms_iou == 0.4, "the file stays the base"

    # The file changed under it: the overlay no longer fits, the file alone runs and the error is kept.
    path.write_text(path.read_text().replace('name = "cam0"', 'name = "front"'))
    loaded = load_effective(path)
    assert loaded.version == EMPTY_VERSION and loaded.config.uplink.max_batch_events == 100
    assert loaded.error is not None and "cameras.cam0: this pole has no camera" in loaded.error
    loaded.overlay_path.write_text("{not json")
    assert "unreadable" in (load_effective(path).error or "")


def test_check_config_prints_the_effective_configuration_with_secrets_masked(
    tmp_path: Path, smartpole_cmd: list[str], child_env: dict[str, str]
) -> None:
    path = pole_file(tmp_path)
    overlay = tmp_path / "overlay.toml"
    overlay.write_text("[uplink]\nmax_batch_events = 9\n[cameras.cam0]\nfps = 3\n")

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*smartpole_cmd, "check-config", "--effective", str(path), *args],
            capture_output=True,
            text=True,
            env=child_env,
            timeout=60,
        )

    result = check("--overlay", str(overlay))
    assert result.returncode == 0, result.stderr
    effective: dict[str, Any] = json.loads(result.stdout)
    assert effective["uplink"]["max_batch_events"] == 9 and effective["cameras"][0]["fps"] == 3.0
    assert effective["uplink"]["token"] == "**********" and "spt_secret" not in result.stdout
    assert "remote overlay" in result.stderr
    result = check()  # nothing persisted yet
    assert result.returncode == 0 and "no remote overlay" in result.stderr
    assert json.loads(result.stdout)["uplink"]["max_batch_events"] == 100
    overlay.write_text('[cameras.cam9]\nfps = 3\n[uplink]\nurl = "https://elsewhere"\n')
    result = check("--overlay", str(overlay))
    assert result.returncode == 2 and "uplink.url: may not be changed remotely" in result.stderr


def test_the_fetch_url_follows_the_uplink_and_its_tls_rule() -> None:
    assert UplinkConfig(url="https://rx.city").remote_config_url() == "https://rx.city"
    mqtt = {"kind": "mqtt", "url": "mqtts://broker.city"}
    assert UplinkConfig.model_validate(mqtt).remote_config_url() is None
    media = {"media": "http", "media_url": "https://rx.city"}
    assert UplinkConfig.model_validate({**mqtt, "mqtt": media}).remote_config_url() == "https://rx.city"
    chosen = UplinkConfig.model_validate({**mqtt, "config_url": "https://cfg.city"})
    assert chosen.remote_config_url() == "https://cfg.city"
    with pytest.raises(ValidationError, match="without TLS"):
        UplinkConfig.model_validate({**mqtt, "config_url": "http://cfg.city"})


async def test_the_fetcher_refuses_what_is_not_its_version_and_reports_fetch_errors(tmp_path: Path) -> None:
    """The pole side without a receiver: a server answering a tampered overlay, then an error."""
    overlay = {"uplink": {"max_batch_events": 3}}
    answers: list[tuple[int, dict[str, Any]]] = [
        (200, {"version": overlay_version(overlay), "overlay": {"uplink": {"max_batch_events": 4}}}),
        (503, {"error": "database unavailable, retry later"}),
        (200, {"version": overlay_version(overlay), "overlay": overlay}),
    ]

    async def config(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer spt_secret-in-the-file"
        status, body = answers.pop(0)
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_get("/v1/poles/pole-7/config", config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        path = pole_file(tmp_path)
        path.write_text(path.read_text().replace("[uplink]", f'[uplink]\nurl = "http://127.0.0.1:{port}"'))
        ready: list[LoadedConfig] = []
        fetcher = RemoteConfigFetcher(load_effective(path), ready.append)
        target = overlay_version(overlay)
        await fetcher.update(target)
        assert fetcher.failed == target and "is not version" in (fetcher.error or "") and not ready
        fetcher.heard(EMPTY_VERSION)  # the admin went back to what runs: the error no longer holds
        assert fetcher.error is None
        fetcher.failed = None
        with pytest.raises(FetchError, match="503: database unavailable"):
            await fetcher.update(target)
        await fetcher.update(target)
        (loaded,) = ready
        assert loaded.version == target and loaded.config.uplink.max_batch_events == 3 and fetcher.error is None
        assert read_overlay(loaded.overlay_path) == (overlay, target)
        fetcher.heard(target)  # the restart is under way: nothing more to fetch
        assert not fetcher._wake.is_set()  # noqa: SLF001
    finally:
        await runner.cleanup()
