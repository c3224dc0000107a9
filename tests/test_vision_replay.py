"""``smartpole replay``: the pipeline over real media, events exactly as committed, snapshots, clear errors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from gateway.replay import replay_main
from tests.helpers.vision import CLIP, FACES, VEHICLES, read_jsonl

WIRE_KEYS = ["id", "seq", "ts", "type", "priority", "location", "data", "media", "source", "snapshot"]


def check_line_and_snapshot(out: Path, line: str) -> dict:
    event = json.loads(line)
    assert list(event) == WIRE_KEYS
    # The committed body is the line up to the two appended keys, byte for byte.
    body = line[: line.rindex(',"source":')] + "}"
    assert json.loads(body) == {k: v for k, v in event.items() if k not in ("source", "snapshot")}
    if event["media"]:
        jpeg = (out / event["snapshot"]).read_bytes()
        assert hashlib.sha256(jpeg).hexdigest() == event["media"][0]
        assert jpeg.startswith(b"\xff\xd8")
    else:
        assert event["snapshot"] is None
    return event


def test_a_folder_of_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("voc2011_000025_bus_plate.jpg", "street_00000100.jpg", "licenseplate_motion.jpg", "person.jpg"):
        os.symlink(VEHICLES / name, folder / name)
    os.symlink(FACES / "messi5.jpg", folder / "messi5.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "street_00000100.json").write_text("{}")
    out = tmp_path / "out"
    assert replay_main(folder, out, None) == 0
    lines = (out / "events.jsonl").read_text().splitlines()
    events = [check_line_and_snapshot(out, line) for line in lines]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    by_source: dict[str, list[dict]] = {}
    for e in events:
        by_source.setdefault(e["source"], []).append(e)
    # Every image with people or vehicles has an event with a full-size redacted snapshot; the
    # motion-blurred car rear, where nothing is detected, has none; other files are ignored.
    assert sorted(by_source) == ["messi5.jpg", "person.jpg", "street_00000100.jpg", "voc2011_000025_bus_plate.jpg"]
    for source, evs in by_source.items():
        shot = next(e for e in evs if e["snapshot"])
        height, width = cv2.imread(str(folder / source)).shape[:2]
        snap = cv2.imread(str(out / shot["snapshot"]))
        assert snap.shape[:2] == (height, width)
        assert shot["data"]["snapshot"]["width"] == width
    assert by_source["messi5.jpg"][0]["data"]["snapshot"]["faces_redacted"] >= 1
    plate = [e for e in by_source["voc2011_000025_bus_plate.jpg"] if e["type"] == "plate_read"]
    assert len(plate) == 1 and plate[0]["data"]["plate_policy"] == "drop"
    assert "EBY" not in (out / "events.jsonl").read_text()
    assert len(list((out / "snapshots").iterdir())) == sum(1 for e in events if e["snapshot"])


def test_the_street_video(tmp_path: Path) -> None:
    config = tmp_path / "pole.toml"
    config.write_text(
        "[pole]\nid = 'ignored-by-replay'\n\n"
        "[[vision.lines]]\nname = 'middle'\nstart = [0.0, 0.5]\nend = [1.0, 0.5]\n"
        "forward = 'south'\nbackward = 'north'\n"
    )
    out = tmp_path / "out"
    assert replay_main(CLIP, out, config) == 0
    events = [check_line_and_snapshot(out, line) for line in (out / "events.jsonl").read_text().splitlines()]
    presence = [e for e in events if e["type"] == "presence"]
    counts = [e for e in events if e["type"] == "count"]
    frames_with_presence = {e["source"] for e in presence if e["snapshot"] and e["data"]["total"]}
    assert len(frames_with_presence) >= 110  # people are on every frame of the clip
    assert all(isinstance(s, int) and 0 <= s < 120 for s in frames_with_presence)
    snap = cv2.imread(str(out / presence[0]["snapshot"]))
    assert snap.shape == (576, 768, 3)
    assert counts and all(e["data"]["line"] == "middle" and e["data"]["period_s"] == 60 for e in counts)
    crossings = sum(n for e in counts for by_label in e["data"]["counts"].values() for n in by_label.values())
    assert crossings >= 2
    assert all(set(e["data"]["counts"]) <= {"south", "north"} for e in counts)


def test_a_corrupt_video_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.avi"
    broken.write_bytes(CLIP.read_bytes()[:4000])
    assert replay_main(broken, tmp_path / "out", None) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.avi" in err[0] and "corrupt" in err[0]
    assert not (tmp_path / "out" / "events.jsonl").exists()


def test_a_missing_input_or_a_bad_config_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay_main(tmp_path / "nope.avi", tmp_path / "out", None) == 2
    assert "nope.avi: no such file or directory" in capsys.readouterr().err
    bad = tmp_path / "pole.toml"
    bad.write_text("[vision.detection]\nthreshhold = 0.5\n")
    assert replay_main(CLIP, tmp_path / "out", bad) == 2
    assert "vision.detection.threshhold: unknown key" in capsys.readouterr().err


def test_an_unreadable_image_is_named_and_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    cv2.imwrite(str(folder / "b_grey.png"), np.full((120, 160, 3), 128, np.uint8))
    assert replay_main(folder, tmp_path / "out", None) == 1
    assert "a_broken.jpg: not an image OpenCV can decode" in capsys.readouterr().err
    assert read_jsonl(tmp_path / "out" / "events.jsonl") == []
