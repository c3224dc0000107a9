"""The whole daemon as a process: starts with nothing attached, exposes every metric, reloads its config."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from hal.simulator import SimulatedSerialDevice
from tests.conftest import DATA, ROOT
from tests.helpers.pole import PoleProcess, free_port, standalone_pole

PASSWORD = "reload-test-password"


def test_example_config_starts_on_any_machine(
    tmp_path: Path, smartpole_cmd: list[str], child_env: dict[str, str]
) -> None:
    """No camera, no serial ports, no receiver, no token: all reported and retried, none fatal."""
    port = free_port()
    text = (ROOT / "config" / "pole.example.toml").read_text()
    text = re.sub(r"(?m)^port = 8470", f"port = {port}", text)
    assert f"port = {port}" in text
    pole = PoleProcess(tmp_path, "http://127.0.0.1:9", "unused")
    pole.config = tmp_path / "example.toml"  # the example file itself, run from an empty directory
    pole.config.write_text(text)
    pole.port = port
    pole.env.pop("SMARTPOLE_UPLINK_TOKEN")
    pole.start(timeout=60)
    try:
        pole.wait_until(lambda: any(r.get("event") == "camera_down" for r in pole.log_records()))
        pole.wait_until(lambda: any(r.get("event") == "uplink_retry" for r in pole.log_records()))
        pole.wait_until(lambda: any(str(r.get("error")).startswith("open_failed") for r in pole.log_records()))
        import urllib.request

        with urllib.request.urlopen(pole.url + "/healthz", timeout=5) as r:
            assert r.status == 200
        assert pole.proc is not None and pole.proc.poll() is None, "still running"
    finally:
        assert pole.stop() == 0
    assert (tmp_path / "var" / "state" / "outbox.db").exists()


EXPECTED = {
    "smartpole_frames": "counter",
    "smartpole_frames_dropped": "counter",
    "smartpole_pipeline_fps": "gauge",
    "smartpole_inference_seconds": "histogram",
    "smartpole_events": "counter",
    "smartpole_outbox_events": "gauge",
    "smartpole_outbox_bytes": "gauge",
    "smartpole_outbox_oldest_age_seconds": "gauge",
    "smartpole_outbox_evicted": "counter",
    "smartpole_outbox_dead_letters": "gauge",
    "smartpole_outbox_written_bytes": "counter",
    "smartpole_uplink_batches": "counter",
    "smartpole_uplink_last_success_timestamp_seconds": "gauge",
    "smartpole_uplink_backoff_seconds": "gauge",
    "smartpole_camera_up": "gauge",
    "smartpole_camera_condition": "gauge",
    "smartpole_outbox_max_bytes": "gauge",
    "smartpole_sensor_readings": "counter",
    "smartpole_sensor_errors": "counter",
    "smartpole_redactions": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_cpu_seconds": "counter",
}


async def test_metrics_from_a_real_camera_and_sensors(tmp_path: Path) -> None:
    video = DATA / "video" / "vtest_12s.avi"
    devices = [SimulatedSerialDevice(kind, seed=3).start() for kind in ("pms5003", "radar")]
    noisy = SimulatedSerialDevice("nmea", seed=4).start()
    try:
        sensors = "".join(
            f'\n[[sensors]]\nname = "{d.kind}"\nkind = "{d.kind}"\nport = "{d.port_path}"\n' for d in [*devices, noisy]
        )
        camera = f'\n[[cameras]]\nname = "street"\nsource = "{video}"\nkind = "file"\nat_end = "loop"\n'
        # No receiver, and room for three small events: a busy street makes the outbox evict.
        pole = PoleProcess(
            tmp_path, "http://127.0.0.1:9", "unused", extra_toml=camera + sensors, outbox={"max_bytes": 3000}
        )
        await asyncio.to_thread(pole.start, 60)
        noisy.write(b"$GNGGA,garbage*00\r\n\xff\xfe")
        try:
            async with aiohttp.ClientSession() as s:
                families: dict = {}
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    async with s.get(pole.url + "/metrics") as r:
                        assert r.status == 200
                        assert r.headers["Content-Type"].startswith("text/plain")
                        families = {f.name: f for f in text_string_to_metric_families(await r.text())}
                    ready = (
                        _value(families, "smartpole_frames", camera="street") > 20
                        and _value(families, "smartpole_redactions", kind="face") > 0
                        and _value(families, "smartpole_sensor_readings", sensor="radar") > 0
                        and families["smartpole_outbox_evicted"].samples
                        and families["smartpole_sensor_errors"].samples
                    )
                    if ready:
                        break
                    await asyncio.sleep(0.5)
            for name, kind in EXPECTED.items():
                assert name in families, f"{name} missing"
                assert families[name].type == kind, f"{name} is a {families[name].type}, not a {kind}"
            assert _value(families, "smartpole_camera_up", camera="street") == 1
            assert _value(families, "smartpole_camera_condition", camera="street", condition="covered") == 0
            assert _value(families, "smartpole_outbox_max_bytes") > 0
            assert _value(families, "smartpole_pipeline_fps", camera="street") > 1
            assert _value(families, "smartpole_inference_seconds_count", model="nanodet") > 10
            assert _value(families, "smartpole_events", type="presence") > 0
            assert _value(families, "smartpole_outbox_bytes") <= 3000
            assert _value(families, "smartpole_uplink_batches", result="network_error") > 0
            assert any(s.labels["reason"].startswith("cap:") for s in families["smartpole_outbox_evicted"].samples)
            assert any(s.labels["sensor"] == "nmea" for s in families["smartpole_sensor_errors"].samples)
        finally:
            await asyncio.to_thread(pole.stop)
    finally:
        for d in [*devices, noisy]:
            d.stop()


def _value(families: dict, name: str, **labels: str) -> float:
    family_name = name.removesuffix("_count")
    family = families.get(family_name) or families.get(name)
    if family is None:
        return 0.0
    for sample in family.samples:
        if sample.name in (name, name + "_total") and all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    return 0.0


async def test_reload_on_sighup_and_from_the_status_page(tmp_path: Path) -> None:
    async with standalone_pole(tmp_path, PASSWORD) as pole:
        pole.config.write_text(pole.config.read_text().replace('id = "pole-1"', 'id = "pole-renamed"'))
        assert pole.proc is not None
        pole.proc.send_signal(signal.SIGHUP)
        await asyncio.to_thread(
            pole.wait_until,
            lambda: any(r.get("event") == "ready" and r.get("pole_id") == "pole-renamed" for r in pole.log_records()),
        )
        # unsafe=True: aiohttp otherwise refuses cookies from an IP address like 127.0.0.1.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            async with s.post(pole.url + "/login", data={"password": PASSWORD}) as r:
                assert r.status == 200  # followed the redirect to the page
                page = await r.text()
            token = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
            async with s.get(pole.url + "/status.json") as r:
                assert (await r.json())["status"]["pole"]["id"] == "pole-renamed"

            text = pole.config.read_text()
            assert "[outbox]\n" in text
            pole.config.write_text(text.replace("[outbox]\n", "[outbox]\nmax_bytes = -1\n"))
            async with s.post(pole.url + "/actions/reload-config", headers={"X-CSRF-Token": token}) as r:
                assert r.status == 400
                assert "outbox.max_bytes" in (await r.json())["error"]
            async with s.get(pole.url + "/status.json") as r:
                assert r.status == 200, "a refused reload leaves the daemon running as it was"
