"""Radar passes + recorded plate sightings: one traffic_violation per (pass, vehicle), privacy kept."""

from __future__ import annotations

import json
import threading

import pytest

from gateway.sensing.fusion import TrafficFusion
from gateway.sensing.sightings import PlateSighting
from gateway.sensing.speed import SpeedPass, SpeedPasses, TrafficConfig
from gateway.vision.privacy import PlatePolicy
from hal.sensors.config import RadarConfig
from hal.sensors.radar import RadarReading
from sync.events import Location, NewEvent, Priority

T0 = 1_790_000_000.0
JPEG = b"\xff\xd8\xff\xe0redacted-frame\xff\xd9"
HERE = Location(52.37, 4.89, "gps")
HASH = PlatePolicy(mode="hash", secret="a-deployment-secret-of-some-length")


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def radar(**options: object) -> RadarConfig:
    return RadarConfig.model_validate({"name": "radar", "kind": "radar", "port": "/dev/ttyRADAR", **options})


def drive_by(
    kmh: list[float],
    start: float,
    config: TrafficConfig,
    radar_config: RadarConfig | None = None,
    rate_hz: float = 10.0,
) -> SpeedPass:
    """A vehicle through the beam: one report per value at ``rate_hz``, then silence closes the pass."""
    passes = SpeedPasses(radar_config or radar(unit="kmh"), config)
    closed: list[SpeedPass] = []
    for i, v in enumerate(kmh):
        closed += passes.add(RadarReading(v, "kmh"), start + i / rate_hz)
    closed += passes.due(start + len(kmh) / rate_hz + config.pass_gap_s + 0.1)
    assert len(closed) == 1
    return closed[0]


def sighting(
    ts: float,
    text: str = "EBY-584",
    track: int | None = 7,
    camera: str = "cam0",
    policy: PlatePolicy = HASH,
    jpeg: bytes | None = JPEG,
) -> PlateSighting:
    return PlateSighting(ts=ts, camera=camera, track_id=track, plate=policy.fields(text), evidence_jpeg=jpeg)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def emitted() -> list[NewEvent]:
    return []


@pytest.fixture
def fusion(clock: Clock, emitted: list[NewEvent]) -> TrafficFusion:
    return TrafficFusion(TrafficConfig(speed_limit_kmh=50, window_s=2.0), emitted.append, lambda: HERE, clock)


CONFIG = TrafficConfig(speed_limit_kmh=50, window_s=2.0)


def test_speed_then_plate_makes_one_alert(fusion: TrafficFusion, clock: Clock, emitted: list[NewEvent]) -> None:
    p = drive_by([48, 55, 63, 61, 52, 47], T0, CONFIG)
    clock.now = T0 + 2
    fusion.on_pass(p)
    assert emitted == []
    fusion.on_plate(sighting(T0 + 1.5))
    (event,) = emitted
    assert event.type == "traffic_violation" and event.priority is Priority.ALERT
    assert event.media == (JPEG,) and event.location == HERE
    assert event.ts == p.peak_ts == T0 + 0.2
    assert event.data == {
        "sensor": "radar",
        "camera": "cam0",
        "track_id": 7,
        "direction": "inbound",
        "speed_kmh": 63.0,
        "limit_kmh": 50.0,
        "speed_ts": T0 + 0.2,
        "plate_ts": T0 + 1.5,
        "evidence": True,
        **HASH.fields("EBY584"),
    }


def test_plate_then_speed(fusion: TrafficFusion, clock: Clock, emitted: list[NewEvent]) -> None:
    fusion.on_plate(sighting(T0 - 1.0))
    clock.now = T0 + 3
    fusion.on_pass(drive_by([70, 72, 71], T0, CONFIG))
    assert len(emitted) == 1 and emitted[0].data["speed_kmh"] == 72.0


def test_many_reads_of_one_vehicle_make_one_violation(
    fusion: TrafficFusion, clock: Clock, emitted: list[NewEvent]
) -> None:
    # The camera reads the same tracked car on several frames, before and after the radar pass closes.
    for k in range(4):
        fusion.on_plate(sighting(T0 + 0.1 * k))
    clock.now = T0 + 2
    fusion.on_pass(drive_by([60.0] * 15, T0, CONFIG))
    for k in range(4):
        fusion.on_plate(sighting(T0 + 1 + 0.1 * k))
    assert len(emitted) == 1
    # The read nearest the peak is the evidence.
    assert emitted[0].data["plate_ts"] == T0


def test_two_vehicles_in_the_window_make_two(fusion: TrafficFusion, clock: Clock, emitted: list[NewEvent]) -> None:
    clock.now = T0 + 2
    fusion.on_pass(drive_by([66, 67], T0, CONFIG))
    fusion.on_plate(sighting(T0 + 0.5, text="AAA111", track=1))
    fusion.on_plate(sighting(T0 + 0.7, text="BBB222", track=2))
    fusion.on_plate(sighting(T0 + 0.9, text="AAA111", track=1))
    assert [e.data["track_id"] for e in emitted] == [1, 2]


def test_untracked_reads_are_told_apart_by_policy_fields(
    fusion: TrafficFusion, clock: Clock, emitted: list[NewEvent]
) -> None:
    clock.now = T0 + 2
    fusion.on_pass(drive_by([66, 67], T0, CONFIG))
    for text in ("AAA111", "BBB222", "AAA111"):
        fusion.on_plate(sighting(T0 + 0.5, text=text, track=None))
    assert len(emitted) == 2
    # Under "drop" nothing tells two untracked reads apart: one violation for the pass.
    drop = PlatePolicy()
    fusion.on_pass(drive_by([80, 81], T0 + 10, CONFIG))
    for text in ("CCC333", "DDD444"):
        fusion.on_plate(sighting(T0 + 10.5, text=text, track=None, policy=drop))
    assert len(emitted) == 3 and emitted[-1].data["plate_policy"] == "drop"


def test_outside_the_window_or_under_the_limit_is_no_violation(
    fusion: TrafficFusion, clock: Clock, emitted: list[NewEvent]
) -> None:
    clock.now = T0 + 2
    fusion.on_pass(drive_by([40, 45, 49.9], T0, CONFIG))  # under the limit
    fusion.on_plate(sighting(T0 + 0.1))
    fast = drive_by([40, 70, 40], T0 + 20, CONFIG)  # over the limit at T0 + 20.1 only
    clock.now = T0 + 22
    fusion.on_pass(fast)
    fusion.on_plate(sighting(T0 + 22.2, track=8))  # 2.1 s after the last over-limit report
    fusion.on_plate(sighting(T0 + 18.0, track=9))  # 2.1 s before the first
    assert emitted == []
    fusion.on_plate(sighting(T0 + 22.0, track=10))  # 1.9 s after: paired
    assert [e.data["track_id"] for e in emitted] == [10]


def test_plain_text_never_leaves_unless_the_policy_keeps_it(
    fusion: TrafficFusion, clock: Clock, emitted: list[NewEvent]
) -> None:
    clock.now = T0 + 2
    fusion.on_pass(drive_by([90], T0, CONFIG))
    fusion.on_plate(sighting(T0, text="XY-99-ZZ", track=1, policy=PlatePolicy()))
    fusion.on_plate(sighting(T0, text="XY-99-ZZ", track=2, policy=HASH))
    fusion.on_plate(sighting(T0, text="XY-99-ZZ", track=3, policy=PlatePolicy(mode="keep")))
    dumps = [json.dumps(e.data) for e in emitted]
    assert "XY99ZZ" not in dumps[0] and "XY99ZZ" not in dumps[1]
    assert emitted[2].data["plate_text"] == "XY99ZZ"


def test_no_evidence_image_means_no_media(fusion: TrafficFusion, clock: Clock, emitted: list[NewEvent]) -> None:
    clock.now = T0 + 2
    fusion.on_pass(drive_by([90], T0, CONFIG))
    fusion.on_plate(sighting(T0, jpeg=None))
    assert emitted[0].media == () and emitted[0].data["evidence"] is False


def test_a_radar_pairs_only_with_its_cameras(fusion: TrafficFusion, clock: Clock, emitted: list[NewEvent]) -> None:
    clock.now = T0 + 2
    fusion.on_pass(drive_by([90], T0, CONFIG, radar(unit="kmh", cameras=["north"])))
    fusion.on_plate(sighting(T0, camera="south", track=1))
    fusion.on_plate(sighting(T0, camera="north", track=2))
    assert [e.data["camera"] for e in emitted] == ["north"]


def test_old_sightings_and_passes_are_forgotten(fusion: TrafficFusion, clock: Clock, emitted: list[NewEvent]) -> None:
    fusion.on_plate(sighting(T0))
    clock.now = T0 + 60
    fusion.expire(clock.now)
    assert fusion.stats().plates_waiting == 0
    # A pass measured at T0 reaching fusion a minute later finds no plate to pair with.
    fusion.on_pass(drive_by([90], T0, CONFIG))
    assert emitted == []
    clock.now = T0 + 120
    fusion.expire(clock.now)
    assert fusion.stats().passes_waiting == 0


def test_on_plate_from_another_thread(fusion: TrafficFusion, clock: Clock, emitted: list[NewEvent]) -> None:
    clock.now = T0 + 2
    fusion.on_pass(drive_by([90], T0, CONFIG))
    threads = [threading.Thread(target=fusion.on_plate, args=(sighting(T0, track=i),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e.data["track_id"] for e in emitted) == list(range(8))
    assert fusion.stats().violations == 8


def test_speed_passes_group_reports_per_vehicle_and_direction() -> None:
    config = TrafficConfig(speed_limit_kmh=50, pass_gap_s=0.5, min_speed_kmh=3)
    passes = SpeedPasses(radar(unit="mps"), config)
    closed: list[SpeedPass] = []
    for i in range(10):  # an approaching car at ~15 m/s and a receding cyclist, interleaved
        closed += passes.add(RadarReading(14.0 + i * 0.2, "mps"), T0 + i * 0.1)
        closed += passes.add(RadarReading(-5.0, "mps"), T0 + i * 0.1 + 0.05)
        closed += passes.add(RadarReading(0.0, "mps"), T0 + i * 0.1 + 0.07)  # a blank zero report
    assert closed == []
    closed += passes.add(RadarReading(20.0, "mps"), T0 + 3.0)  # another car, after a gap: closes both
    car, bike = sorted(closed, key=lambda p: p.direction)
    assert (car.direction, car.readings, car.peak_ts) == ("inbound", 10, T0 + 0.9)
    assert car.peak_kmh == pytest.approx(15.8 * 3.6) and car.mean_kmh == pytest.approx(14.9 * 3.6)
    assert car.over_limit and car.over_first_ts == pytest.approx(T0 + 0.1)  # 14.2 m/s = 51.1 km/h
    assert (bike.direction, bike.readings, bike.over_limit) == ("outbound", 10, False)
    assert passes.ignored == 10
    (last,) = passes.flush()
    assert last.readings == 1 and last.peak_kmh == pytest.approx(72.0)


def test_speed_pass_direction_filter_limit_override_and_max_length() -> None:
    config = TrafficConfig(speed_limit_kmh=50, pass_gap_s=1.0, max_pass_s=2.0)
    passes = SpeedPasses(radar(unit="kmh", direction="outbound", speed_limit_kmh=30), config)
    closed: list[SpeedPass] = []
    for i in range(35):  # a queue crawling out of the beam for 3.5 s
        closed += passes.add(RadarReading(-35.0, "kmh"), T0 + i * 0.1)
        closed += passes.add(RadarReading(80.0, "kmh"), T0 + i * 0.1)  # inbound: not watched
    closed += passes.flush()
    assert [p.readings for p in closed] == [20, 15]
    assert all(p.limit_kmh == 30 and p.over_limit and p.direction == "outbound" for p in closed)
    assert passes.ignored == 35


def test_speed_event_shape() -> None:
    p = drive_by([30, 52, 40], T0, CONFIG)
    event = p.event(HERE)
    assert event.type == "speed" and event.priority is Priority.TELEMETRY and event.ts == T0 + 0.1
    assert event.location == HERE
    assert event.data == {
        "sensor": "radar",
        "direction": "inbound",
        "speed_kmh": 52.0,
        "mean_speed_kmh": 40.7,
        "readings": 3,
        "duration_s": 0.2,
        "limit_kmh": 50.0,
        "over_limit": True,
    }
