"""The technicians' decoder as a program: captures on disk and on stdin, JSON lines out, exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.sensor_frames import GGA_CLASSIC, RMC_CLASSIC, nmea, pms_frame, radar_line

DECODE = "import sys; from gateway.sensing.tools import decode_main; sys.exit(decode_main(sys.argv[1], sys.argv[2]))"


def decode(kind: str, file: str, env: dict[str, str], stdin: bytes | None = None) -> tuple[int, list[Any], str]:
    result = subprocess.run(
        [sys.executable, "-c", DECODE, kind, file], input=stdin, capture_output=True, env=env, timeout=60
    )
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    return result.returncode, lines, result.stderr.decode()


def test_pms5003_capture(tmp_path: Path, child_env: dict[str, str]) -> None:
    capture = tmp_path / "pms.bin"
    capture.write_bytes(
        pms_frame()[-9:]  # the capture began mid-frame
        + pms_frame(pm1_0=1, pm2_5=2, pm10=3, particles=(9, 8, 7, 6, 5, 4))
        + pms_frame(checksum=0)
        + b"\x00\x00noise"
        + pms_frame(pm2_5=500, pm10=600)
        + pms_frame()[:20]
    )
    code, lines, _ = decode("pms5003", str(capture), child_env)
    assert code == 0
    assert lines == [
        {
            "pm1_0": 1,
            "pm2_5": 2,
            "pm10": 3,
            "particles_0_3": 9,
            "particles_0_5": 8,
            "particles_1_0": 7,
            "particles_2_5": 6,
            "particles_5_0": 5,
            "particles_10": 4,
        },
        {
            "pm1_0": 0,
            "pm2_5": 500,
            "pm10": 600,
            "particles_0_3": 900,
            "particles_0_5": 260,
            "particles_1_0": 55,
            "particles_2_5": 7,
            "particles_5_0": 2,
            "particles_10": 1,
        },
        {"readings": 2, "errors": {"checksum": 1, "truncated": 1}},
    ]


def test_nmea_from_stdin(child_env: dict[str, str]) -> None:
    stream = (
        GGA_CLASSIC + RMC_CLASSIC + nmea("GPGSV,1,1,00") + nmea("GPGGA,1,2", checksum="00") + b"\xff$GPRMC,\xfe*00\r\n"
    )
    code, lines, _ = decode("nmea", "-", child_env, stdin=stream)
    assert code == 0
    gga, rmc, summary = lines
    assert gga == {
        "sentence": "GPGGA",
        "utc": "12:35:19+00:00",
        "lat": pytest.approx(48.1173),
        "lon": pytest.approx(11.5166667),
        "fix_quality": 1,
        "satellites": 8,
    }
    assert rmc == {
        "sentence": "GPRMC",
        "utc": "1994-03-23T12:35:19+00:00",
        "lat": pytest.approx(48.1173),
        "lon": pytest.approx(11.5166667),
        "fix_quality": 1,
        "satellites": None,
        "speed_knots": pytest.approx(22.4),
    }
    assert summary == {"readings": 2, "errors": {"checksum": 1, "noise": 1, "non_utf8": 1}}


def test_radar_capture(tmp_path: Path, child_env: dict[str, str]) -> None:
    capture = tmp_path / "radar.txt"
    capture.write_bytes(radar_line(1.25) + radar_line(-14.5, unit="mph") + b"junk\r\n" + b"\r\n" + radar_line(0.5))
    code, lines, _ = decode("radar", str(capture), child_env)
    assert code == 0
    assert lines == [
        {"speed": 1.25, "unit": "mps"},
        {"speed": -14.5, "unit": "mph"},
        {"speed": 0.5, "unit": "mps"},
        {"readings": 3, "errors": {"malformed": 1}},
    ]


def test_nothing_decoded_exits_1(tmp_path: Path, child_env: dict[str, str]) -> None:
    capture = tmp_path / "empty.bin"
    capture.write_bytes(b"")
    code, lines, _ = decode("radar", str(capture), child_env)
    assert (code, lines) == (1, [{"readings": 0, "errors": {}}])
    code, lines, _ = decode("pms5003", "-", child_env, stdin=bytes(range(256)))
    assert (code, lines) == (1, [{"readings": 0, "errors": {"noise": 1}}])


def test_bad_kind_or_file_exits_2(tmp_path: Path, child_env: dict[str, str]) -> None:
    code, lines, err = decode("lidar", "-", child_env, stdin=b"")
    assert code == 2 and lines == [] and "unknown sensor kind 'lidar'" in err
    code, lines, err = decode("nmea", str(tmp_path / "missing.bin"), child_env)
    assert code == 2 and lines == [] and "No such file" in err
