"""Radar speed + camera plate = ``traffic_violation``.

A pass over the limit and a plate read within ``window_s`` of its over-limit
reports, in either order, make one violation per (pass, vehicle): a vehicle is
its camera track when the pipeline tracks it, else its policy-applied plate
fields (so under the ``drop`` policy, untracked reads on one camera are one
vehicle). Whichever of the two arrives second triggers the event; a pass is
only paired once it is closed, so the event carries the pass's peak speed.

Fusion never sees plate text beyond what the privacy policy already let into
``PlateSighting.plate``; it copies those fields as they are.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from gateway.sensing.sightings import PlateSighting
from gateway.sensing.speed import SpeedPass, TrafficConfig
from sync.events import Location, NewEvent, Priority

Vehicle = tuple[str, str]  # (camera, track id or plate fields)


@dataclass(frozen=True, slots=True)
class FusionStats:
    plates_seen: int
    passes_over_limit: int
    violations: int
    plates_waiting: int
    passes_waiting: int


def _vehicle(sighting: PlateSighting) -> Vehicle:
    if sighting.track_id is not None:
        return sighting.camera, f"track:{sighting.track_id}"
    return sighting.camera, orjson.dumps(sighting.plate, option=orjson.OPT_SORT_KEYS).decode()


class TrafficFusion:
    """Pairs closed over-limit passes with plate sightings; emits violations through ``emit``.

    ``on_plate`` may be called from any thread (the vision pipeline's); ``emit``
    must then be thread-safe too, as ``SensorEvents.emit`` is.
    """

    def __init__(
        self,
        config: TrafficConfig,
        emit: Callable[[NewEvent], None],
        location: Callable[[], Location | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._window = config.window_s
        # A plate waits for passes still open (up to max_pass_s long, closed pass_gap_s
        # after their last report); a pass waits for plates the vision pipeline is still reading.
        self._plate_ttl = config.window_s + config.max_pass_s + config.pass_gap_s + 1.0
        self._pass_ttl = config.window_s + config.plate_delay_s
        self._emit = emit
        self._location = location
        self._clock = clock
        self._lock = threading.Lock()
        self._plates: list[PlateSighting] = []
        self._passes: list[SpeedPass] = []
        self._paired: set[tuple[int, Vehicle]] = set()
        self._plates_seen = 0
        self._passes_over = 0
        self._violations = 0

    def on_plate(self, sighting: PlateSighting) -> None:
        """A plate was read (already policy-applied and with redacted evidence)."""
        with self._lock:
            self._plates_seen += 1
            self._expire(self._clock())
            for p in self._passes:
                self._pair(p, sighting)
            self._plates.append(sighting)

    def on_pass(self, speed_pass: SpeedPass) -> None:
        """A radar pass closed; only passes over the limit can pair."""
        if not speed_pass.over_limit:
            return
        with self._lock:
            self._passes_over += 1
            self._expire(self._clock())
            # Of several reads of one vehicle, the one nearest the peak speed is the evidence.
            for sighting in sorted(self._plates, key=lambda s: abs(s.ts - speed_pass.peak_ts)):
                self._pair(speed_pass, sighting)
            self._passes.append(speed_pass)

    def stats(self) -> FusionStats:
        with self._lock:
            return FusionStats(
                self._plates_seen, self._passes_over, self._violations, len(self._plates), len(self._passes)
            )

    def expire(self, now: float) -> None:
        with self._lock:
            self._expire(now)

    def _expire(self, now: float) -> None:
        self._plates = [s for s in self._plates if now - s.ts <= self._plate_ttl]
        kept = [p for p in self._passes if p.over_last_ts is not None and now - p.over_last_ts <= self._pass_ttl]
        if len(kept) != len(self._passes):
            live = {p.id for p in kept}
            self._paired = {key for key in self._paired if key[0] in live}
            self._passes = kept

    def _pair(self, p: SpeedPass, sighting: PlateSighting) -> None:
        assert p.over_first_ts is not None and p.over_last_ts is not None
        if p.cameras and sighting.camera not in p.cameras:
            return
        if not p.over_first_ts - self._window <= sighting.ts <= p.over_last_ts + self._window:
            return
        key = (p.id, _vehicle(sighting))
        if key in self._paired:
            return
        self._paired.add(key)
        self._violations += 1
        self._emit(self._violation(p, sighting))

    def _violation(self, p: SpeedPass, sighting: PlateSighting) -> NewEvent:
        data: dict[str, object] = {
            **sighting.plate,
            "sensor": p.sensor,
            "camera": sighting.camera,
            "track_id": sighting.track_id,
            "direction": p.direction,
            "speed_kmh": round(p.peak_kmh, 1),
            "limit_kmh": p.limit_kmh,
            "speed_ts": p.peak_ts,
            "plate_ts": sighting.ts,
            "evidence": sighting.evidence_jpeg is not None,
        }
        return NewEvent(
            type="traffic_violation",
            data=data,
            priority=Priority.ALERT,
            ts=p.peak_ts,
            location=self._location(),
            media=(sighting.evidence_jpeg,) if sighting.evidence_jpeg is not None else (),
        )
