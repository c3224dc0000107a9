"""deploy/prometheus: the alert rules load, each fires from synthetic series and stays silent on
healthy ones (promtool's own unit tests), and every metric they read is one the code exports."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.sensing.location import ClockStatus
from gateway.status import CameraStatus, DiskStatus, PoleInfo, PoleStatus, SensorStatus, UplinkStatus
from gateway.web.metrics import PoleMetrics
from receiver.metrics import ReceiverMetrics
from sync.outbox import OutboxStats
from tests.conftest import ROOT, service_missing

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        service_missing("promtool (Debian package prometheus)", FileNotFoundError("promtool"))
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_the_rules_load() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_from_synthetic_series_and_not_on_healthy_ones() -> None:
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_case_and_a_silent_one() -> None:
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for rule in alerts():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} is never shown firing"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} is never shown silent"


def test_a_broken_rule_fails_its_unit_test(tmp_path: Path) -> None:
    broken = RULES.read_text().replace("expr: smartpole_camera_up == 0", "expr: smartpole_camera_up == 2")
    assert broken != RULES.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / "alerts_test.yml")
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0 and "SmartPoleCameraDown" in result.stdout + result.stderr


def family_samples(registry: Any) -> set[str]:
    """The names of the samples a registry's families can have, whether or not any is labelled yet."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    return names


def pole_status() -> PoleStatus:
    now = time.time()
    outbox = OutboxStats({"event": 3}, {"event": 300}, 300, 10_000, 12.0, {"cap:media": 1}, 0, 4096, 4, "full", 0)
    return PoleStatus(
        now=now,
        pole=PoleInfo("pole-1", "1.0", "c", now - 60, 60.0, None, "ok"),
        outbox=outbox,
        uplink=UplinkStatus("idle", now, None, None, 0.0, None, {"ok": 1}, 3, 300, None),
        disk=DiskStatus(10**9, 2 * 10**9, "/"),
        cameras=[CameraStatus("street", "file", "running", True, 10, 0, 0.1, 10.0, 10.0, 0, None, ["covered"], {})],
        sensors=[SensorStatus("radar", "radar", "/dev/ttyS0", "connected", True, 5, {"crc": 1}, None, now)],
        clock=ClockStatus("ok", 0.1, 2.0, now),
    )


def exported_metric_names() -> set[str]:
    receiver = ReceiverMetrics()
    pole = PoleMetrics()
    text = pole.render(pole_status()).decode() + generate_latest(receiver.registry).decode()
    parsed = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    return parsed | family_samples(receiver.registry) | family_samples(pole.registry)


def test_every_metric_the_rules_read_is_exported_by_the_code() -> None:
    exported = exported_metric_names()
    assert "smartpole_camera_condition" in exported and "smartpole_receiver_poles" in exported
    used = {name for rule in alerts() for name in re.findall(r"\bsmartpole_[a-z0-9_]+", rule["expr"])}
    assert len(used) >= 20
    assert used <= exported, f"not exported by the receiver or the pole: {sorted(used - exported)}"
    tests = RULE_TESTS.read_text()
    fed = set(re.findall(r"series: '(smartpole_[a-z0-9_]+)", tests))
    assert fed <= exported, f"the unit tests feed series nothing exports: {sorted(fed - exported)}"
