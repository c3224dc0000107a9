"""The vision pipeline of one camera: frames in, events with redacted snapshots out.

Per frame: the motion gate (and camera health) on a small grey copy; the
detector where something moves, or on the whole frame at least every
``full_pass_interval_s``; the tracker; counting lines and zones; at most one
plate-reading attempt; and, only for frames that produce an event with a
picture (or refresh the status page), face and plate redaction and the JPEG.
With clips on, every frame kept for them (``[vision.clips] fps``) is redacted
by the video redactor and goes into the clip ring buffer; clips are encoded
on a thread of their own. All pixel work runs on the inference pool, never on
the event loop.

The pipeline knows events only as :class:`~sync.events.NewEvent` handed to an
:class:`~sync.events.EventSink`: the daemon wires it to the outbox, replay to
a file, tests to a list.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import structlog

from gateway.sensing.sightings import PlateSighting
from gateway.vision import events as ve
from gateway.vision.clips import ClipRecorder, ClipRequest, ClipStats
from gateway.vision.config import VisionConfig
from gateway.vision.counting import Crossing, LineCounter
from gateway.vision.health import CameraHealth, HealthChange
from gateway.vision.motion import MotionGate, MotionResult, small_grey
from gateway.vision.mp4 import encode_mp4
from gateway.vision.plates import PlateRead, PlateReader
from gateway.vision.privacy import PlatePolicy
from gateway.vision.snapshots import Snapshot, SnapshotMaker, SnapshotStats
from gateway.vision.tracker import Track, Tracker
from gateway.vision.videoredact import TrackBox, VideoRedactor
from gateway.vision.zones import ZonePresence
from hal.camera.base import Camera, CameraStats, Frame
from models.detection import PEOPLE, Box, Detection, ObjectDetector, offset, to_pixels
from models.redact import RedactionUnavailable, Redactor
from models.runtime import ModelStats
from models.smallfaces import TileMemory
from sync.events import EventSink, Location, NewEvent

log = structlog.get_logger(__name__)

PlateCallback = Callable[[PlateSighting], Awaitable[None] | None]
LocationProvider = Callable[[], Location | None]

STAGES = ("motion", "detect", "track", "plates", "redact", "encode", "commit", "clip_redact", "clip_encode")
_FRAME_WAIT_S = 0.5  # longest wait for a frame before the loop reports progress again
_RECENT = 300
_MAX_COMMITTING = 64  # frames whose events wait for the outbox's commit at once (commit_behind)


class StatsSource(Protocol):
    """Anything with ``stats() -> ModelStats`` (detectors, finders, recognisers)."""

    def stats(self) -> ModelStats: ...


@dataclass(slots=True)
class VisionParts:
    """The models a pipeline uses, shared by all cameras; built by ``gateway.vision.setup.load_parts``."""

    detector: ObjectDetector
    redactor: Redactor
    plate_reader: PlateReader | None
    timed: list[StatsSource] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """One camera's pipeline for the status page and metrics."""

    camera: CameraStats
    fps: float
    frames_processed: int
    detection_passes: int
    frames_without_motion: int
    tracks: int
    events: dict[str, int]
    events_failed: int
    frame_errors: int
    counted_crossings: int
    plates_read: int
    snapshots: SnapshotStats
    clips: ClipStats | None
    models: list[ModelStats]
    models_loaded: list[str]
    stage_ms: dict[str, float]
    active_conditions: list[str]
    last_progress: float


@dataclass(frozen=True, slots=True)
class _Analysis:
    detections: list[Detection]
    region: Box | None
    detected: bool
    motion: MotionResult | None
    health: list[HealthChange]
    motion_s: float
    detect_s: float


class VisionPipeline:
    """Turns one camera's frames into events. ``await run(stop)``; ``stats()`` any time."""

    def __init__(
        self,
        camera: Camera,
        parts: VisionParts,
        config: VisionConfig,
        plate_policy: PlatePolicy,
        sink: EventSink,
        executor: Executor,
        on_plate: PlateCallback | None = None,
        location: LocationProvider | None = None,
        commit_behind: bool = False,
    ) -> None:
        """``commit_behind``: hand each frame's events to the sink and go on to the next frame while
        they commit (the daemon's outbox gathers puts for up to its commit window, a second by
        default, which the frame loop must not wait for); at most ``_MAX_COMMITTING`` frames' events
        wait at once, and ``flush`` waits for all of them. Without it (replay, tests) a frame's
        events are committed before the next frame is read."""
        self.camera = camera
        self.name = camera.name
        self.parts = parts
        self.config = config
        self.plate_policy = plate_policy
        self.sink = sink
        self.executor = executor
        self.on_plate = on_plate
        self.location = location
        self.snapshots = SnapshotMaker(parts.redactor, config.snapshots)
        self.tracker = Tracker(config.tracker)
        self.counter = LineCounter(config.lines)
        self.zones = ZonePresence(config.zones, config.presence)
        self.motion = MotionGate(config.motion)
        self.health = CameraHealth(config.health)
        # Snapshots rescan only the small-face tiles where something moved since their last scan.
        self.tiles = TileMemory(config.redaction.small_faces)
        self.clips: ClipRecorder | None = None
        self.video: VideoRedactor | None = None
        self._clip_encoder: ThreadPoolExecutor | None = None
        if config.clips.enabled:
            self.clips = ClipRecorder(config.clips, self.name)
            self.video = VideoRedactor(parts.redactor, config.clips.redaction)
        self._encoding: set[asyncio.Task[None]] = set()
        self._commit_behind = commit_behind
        self._committing: set[asyncio.Task[None]] = set()
        self._commit_slots = asyncio.Semaphore(_MAX_COMMITTING)
        self._clock: tuple[float, float] | None = None  # (stream time, wall time) of the newest frame
        self.last_progress = time.monotonic()
        self._last_full: float | None = None
        self._since_detection = 0
        self._last_presence_snapshot: float | None = None
        self._last_status_snapshot: float | None = None
        self._stage: dict[str, deque[float]] = {s: deque(maxlen=_RECENT) for s in STAGES}
        self._done: deque[float] = deque(maxlen=_RECENT)
        self._frames = 0
        self._passes = 0
        self._still = 0
        self._events: dict[str, int] = {}
        self._events_failed = 0
        self._frame_errors = 0
        self._plates_read = 0

    # ------------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        """Read and process frames until ``stop`` is set (or a file camera with ``at_end="stop"`` ends)."""
        self.camera.start()
        log.info("vision_started", camera=self.name, models=self.parts.loaded, redaction=self.parts.redactor.available)
        try:
            while not stop.is_set():
                self.last_progress = time.monotonic()
                await self._watch_camera()
                frame = await self.camera.frame(timeout=_FRAME_WAIT_S)
                if frame is None:
                    if self.camera.finished:
                        break
                    continue
                try:
                    await self.process(frame)
                except Exception:
                    self._frame_errors += 1
                    log.exception("vision_frame_failed", camera=self.name, seq=frame.seq)
        finally:
            await self.flush()
            await asyncio.to_thread(self.camera.stop)
            log.info("vision_stopped", camera=self.name, frames=self._frames)

    async def process(self, frame: Frame) -> None:
        """Analyse one frame and emit its events."""
        loop = asyncio.get_running_loop()
        height, width = frame.image.shape[:2]
        analysis = await loop.run_in_executor(self.executor, self._analyse, frame)
        self._time("motion", analysis.motion_s)
        if analysis.detected:
            self._time("detect", analysis.detect_s)

        start = time.perf_counter()
        if analysis.detected:
            tracks = self.tracker.update(analysis.detections, frame.t_stream, analysis.region)
        else:
            tracks = self.tracker.confirmed()
        crossings = self.counter.update(tracks, width, height, frame.ts_wall)
        presence = self.zones.due(tracks, width, height, frame.t_stream)
        self._time("track", time.perf_counter() - start)
        self._clock = (frame.t_stream, frame.ts_wall)
        if self.clips is not None:
            self._crossing_triggers(crossings, frame)
            if self.clips.wants(frame.t_stream):
                await self._clip_frame(frame, analysis, loop)

        people, vehicles = self._boxes(analysis.detections, tracks)
        snapshot: Snapshot | None = None
        withheld: str | None = None

        async def picture() -> tuple[Snapshot | None, str | None]:
            nonlocal snapshot, withheld
            if snapshot is None and withheld is None:
                snapshot = await loop.run_in_executor(
                    self.executor,
                    self.snapshots.make,
                    frame.image,
                    people,
                    vehicles,
                    frame.ts_wall,
                    self.name,
                    self.tiles,
                    frame.t_stream,
                )
                if snapshot is None:
                    withheld = self.snapshots.stats().last_error or "redaction unavailable"
                else:
                    self._time("redact", snapshot.redact_s)
                    self._time("encode", snapshot.encode_s)
            return snapshot, withheld

        events: list[NewEvent] = []
        for change in analysis.health:
            events.append(await self._health_event(change, frame, picture))

        read = await self._try_plate(frame, analysis, tracks, loop)
        if read is not None:
            track, plate = read
            shot, why = await picture() if self.config.snapshots.on_plate_read else (None, None)
            fields = self.plate_policy.fields(plate.text)
            data: dict[str, Any] = dict(
                ve.plate_read(
                    self.name,
                    track.id,
                    track.label,
                    plate.confidence,
                    plate.engines,
                    ve.normalised_box(plate.candidate.box, width, height),
                    fields,
                )
            )
            events.append(self._event(ve.PLATE_READ, data, frame, shot, why))
            self._plates_read += 1
            await self._tell_fusion(
                PlateSighting(frame.ts_wall, self.name, track.id, fields, shot.jpeg if shot else None)
            )

        if presence:
            with_picture = self._presence_picture_due(frame.t_stream)
            shot, why = await picture() if with_picture else (None, None)
            if with_picture:
                self._last_presence_snapshot = frame.t_stream
            for report in presence:
                events.append(self._event(ve.PRESENCE, dict(ve.presence(self.name, report)), frame, shot, why))

        for count in self.counter.due(frame.ts_wall):
            events.append(self._event(ve.COUNT, dict(ve.count(self.name, count)), frame, None, None))

        if snapshot is None and withheld is None and self._status_picture_due(frame.t_stream):
            if self.clips is not None and self.clips.ring:
                # The newest clip frame is already redacted: the status page shows it rather than pay for a snapshot.
                newest = self.clips.ring[-1]
                await loop.run_in_executor(self.executor, self.snapshots.show, newest.i420, newest.ts_wall)
                self._last_status_snapshot = frame.t_stream
            else:
                await picture()
        if snapshot is not None or withheld is not None:
            self._last_status_snapshot = frame.t_stream

        await self._emit(events)
        self._frames += 1
        self._done.append(time.monotonic())

    async def flush(self) -> None:
        """Emit what is still aggregated (counts of the current minute, clips being collected)."""
        ts = time.time()
        events = [
            self._event(ve.COUNT, dict(ve.count(self.name, c)), None, None, None, ts) for c in self.counter.flush()
        ]
        await self._emit(events)
        if self.clips is not None and self.video is not None:
            for frame in self.video.flush():
                for request in self.clips.add(frame):
                    self._start_encoding(request)
            for request in self.clips.finish():
                self._start_encoding(request)
        if self._encoding:
            await asyncio.gather(*self._encoding)
        await self._committed()
        if self._clip_encoder is not None:
            self._clip_encoder.shutdown()
            self._clip_encoder = None

    def trigger_clip(self, kind: str = "manual") -> bool:
        """Ask for a clip around the newest frame (the status page's button); False if clips do not take it."""
        if self.clips is None or self._clock is None:
            return False
        return self.clips.trigger(kind, self._clock[0], self._clock[1])

    def observe_event(self, event: NewEvent, event_id: str) -> None:
        """An event was committed: a clip trigger if it is one for this camera (violations, tamper)."""
        if self.clips is None or self._clock is None:
            return
        t = self._clock[0] - (self._clock[1] - event.ts)  # its wall time on this camera's stream clock
        self.clips.observe(event.type, event_id, dict(event.data), t, event.ts)

    def reset_scene(self) -> None:
        """Forget tracks, counts in progress, the background and the learned view (a new, unrelated picture)."""
        self.tracker.reset()
        self.counter.reset()
        self.zones.reset()
        self.motion.reset()
        self.health = CameraHealth(self.config.health)
        self.tiles = TileMemory(self.config.redaction.small_faces)
        self._last_full = None
        if self.video is not None:
            self.video.reset()

    # ------------------------------------------------------------------ on the inference pool

    def _analyse(self, frame: Frame) -> _Analysis:
        image = frame.image
        height, width = image.shape[:2]
        start = time.perf_counter()
        motion: MotionResult | None = None
        health: list[HealthChange] = []
        if self.config.motion.enabled or self.config.health.enabled:
            grey = small_grey(image, self.config.motion.width)
            if self.config.motion.enabled:
                motion = self.motion.update(grey, width, height)
                self.tiles.touch(motion.blobs)
            if self.config.health.enabled:
                health = self.health.observe(grey, frame.t_stream)
        motion_s = time.perf_counter() - start
        if motion is None:
            self.tiles.touch(None)

        full_due = (
            self._last_full is None or frame.t_stream - self._last_full >= self.config.motion.full_pass_interval_s
        )
        if motion is not None and not motion.moving and not full_due:
            self._still += 1
            return _Analysis([], None, False, motion, health, motion_s, 0.0)
        self._since_detection += 1
        if not full_due and self._since_detection < self.config.detection.interval_frames:
            return _Analysis([], None, False, motion, health, motion_s, 0.0)
        self._since_detection = 0
        region = None if (motion is None or full_due) else motion.region
        start = time.perf_counter()
        if region is None:
            detections = self.parts.detector.detect(image)
            self._last_full = frame.t_stream
        else:
            x1, y1, x2, y2 = to_pixels(region)
            found = self.parts.detector.detect(image[y1:y2, x1:x2])
            detections = [Detection(d.label, d.score, offset(d.box, x1, y1)) for d in found]
        self._passes += 1
        return _Analysis(detections, region, True, motion, health, motion_s, time.perf_counter() - start)

    def _read_plate(self, image: np.ndarray, box: Box) -> PlateRead | None:
        assert self.parts.plate_reader is not None
        return self.parts.plate_reader.read(image, box)

    # ------------------------------------------------------------------ helpers

    async def _try_plate(
        self, frame: Frame, analysis: _Analysis, tracks: list[Track], loop: asyncio.AbstractEventLoop
    ) -> tuple[Track, PlateRead] | None:
        if self.parts.plate_reader is None or not self.config.plates.enabled or not analysis.detected:
            return None
        c = self.config.plates
        fresh = [
            t
            for t in tracks
            if t.group == "vehicle"
            and t.last_seen == frame.t_stream
            and not t.plate_read
            and t.plate_attempts < c.attempts_per_track
            and t.box[2] - t.box[0] >= c.min_vehicle_width_px
        ]
        if not fresh:
            return None
        track = max(fresh, key=lambda t: t.box[2] - t.box[0])
        track.plate_attempts += 1
        start = time.perf_counter()
        plate = await loop.run_in_executor(self.executor, self._read_plate, frame.image, track.box)
        self._time("plates", time.perf_counter() - start)
        if plate is None:
            return None
        track.plate_read = True
        return track, plate

    def _crossing_triggers(self, crossings: list[Crossing], frame: Frame) -> None:
        assert self.clips is not None
        for c in crossings:
            if c.label in self.config.clips.line_classes:
                self.clips.trigger(
                    "line_crossing",
                    frame.t_stream,
                    frame.ts_wall,
                    line=c.line,
                    direction=c.direction,
                    label=c.label,
                    track_id=c.track_id,
                )

    async def _clip_frame(self, frame: Frame, analysis: _Analysis, loop: asyncio.AbstractEventLoop) -> None:
        """Redact this frame for the clips (every track's predicted head is covered) and keep it."""
        assert self.clips is not None and self.video is not None
        t = frame.t_stream
        tracks = [
            TrackBox(tr.id, tr.group == "person", tr.box if tr.last_seen == t else tr.predicted(t), tr.last_seen == t)
            for tr in self.tracker.tracks.values()
        ]
        moving = analysis.motion.blobs if analysis.motion is not None else None
        start = time.perf_counter()
        try:
            ready = await loop.run_in_executor(
                self.executor, self.video.push, frame.image, t, frame.ts_wall, tracks, moving
            )
        except RedactionUnavailable as exc:
            self.clips.fail(str(exc))
            return
        finally:
            self._time("clip_redact", time.perf_counter() - start)
        for redacted in ready:
            for request in self.clips.add(redacted):
                self._start_encoding(request)

    def _start_encoding(self, request: ClipRequest) -> None:
        if self._clip_encoder is None:
            # A thread of its own: a clip is encoded while the pipeline goes on with the next frames.
            self._clip_encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"clips-{self.name}")
        task = asyncio.create_task(self._encode_clip(request), name=f"clip:{self.name}")
        self._encoding.add(task)
        task.add_done_callback(self._encoding.discard)

    async def _encode_clip(self, request: ClipRequest) -> None:
        assert self.clips is not None and self._clip_encoder is not None
        frames = request.frames
        c = self.config.clips
        start = time.perf_counter()
        try:
            mp4 = await asyncio.get_running_loop().run_in_executor(
                self._clip_encoder,
                functools.partial(encode_mp4, [f.i420 for f in frames], [f.t for f in frames], c.crf, c.preset),
            )
        except Exception as exc:
            self.clips.withheld(f"encoding failed: {type(exc).__name__}: {exc}")
            log.exception("clip_encoding_failed", camera=self.name)
            return
        self._time("clip_encode", time.perf_counter() - start)
        self.clips.made()
        width = frames[0].i420.shape[1]
        height = frames[0].i420.shape[0] * 2 // 3
        duration = frames[-1].t - frames[0].t
        data = ve.ClipData(
            camera=self.name,
            triggers=request.triggers,
            start_ts=round(frames[0].ts_wall, 3),
            end_ts=round(frames[-1].ts_wall, 3),
            duration_s=round(duration, 3),
            frames=len(frames),
            fps=round((len(frames) - 1) / duration, 2) if duration > 0 else 0.0,
            width=width,
            height=height,
            codec="h264",
            container="mp4",
            bytes=len(mp4),
            faces_redacted=sum(f.faces for f in frames),
            plates_redacted=sum(f.plates for f in frames),
        )
        location = self.location() if self.location is not None else None
        await self._emit([ve.new_event(ve.CLIP, data, frames[0].ts_wall, location, mp4)])

    def _boxes(self, detections: Sequence[Detection], tracks: Sequence[Track]) -> tuple[list[Box], list[Box]]:
        """Boxes whose faces and plates a snapshot must cover: this frame's detections and every track."""
        people = [d.box for d in detections if d.label in PEOPLE] + [t.box for t in tracks if t.group == "person"]
        vehicles = [d.box for d in detections if d.label not in PEOPLE] + [
            t.box for t in tracks if t.group == "vehicle"
        ]
        # A track matched on this frame has exactly its detection's box.
        return list(dict.fromkeys(people)), list(dict.fromkeys(vehicles))

    async def _health_event(
        self,
        change: HealthChange,
        frame: Frame,
        picture: Callable[[], Awaitable[tuple[Snapshot | None, str | None]]],
    ) -> NewEvent:
        level = log.warning if change.active else log.info
        level(
            "camera_condition", camera=self.name, condition=change.condition, active=change.active, detail=change.detail
        )
        if not change.is_tamper:
            return self._event(ve.CAMERA_FAULT, dict(ve.camera_fault(self.name, change)), frame, None, None)
        with_picture = change.active and self.config.snapshots.on_tamper
        shot, why = await picture() if with_picture else (None, None)
        return self._event(ve.TAMPER, dict(ve.tamper(self.name, change)), frame, shot, why)

    async def _watch_camera(self) -> None:
        stats = self.camera.stats()
        changes = self.health.camera(stats.state != "down", time.monotonic(), stats.last_error)
        events = [
            self._event(ve.CAMERA_FAULT, dict(ve.camera_fault(self.name, c)), None, None, None, time.time())
            for c in changes
        ]
        for change in changes:
            level = log.warning if change.active else log.info
            level("camera_condition", camera=self.name, condition="down", active=change.active, detail=change.detail)
        await self._emit(events)

    def _presence_picture_due(self, t: float) -> bool:
        last = self._last_presence_snapshot
        return last is None or t - last >= self.config.snapshots.presence_interval_s

    def _status_picture_due(self, t: float) -> bool:
        last = self._last_status_snapshot
        return last is None or t - last >= self.config.snapshots.status_interval_s

    def _event(
        self,
        type_: str,
        data: dict[str, Any],
        frame: Frame | None,
        shot: Snapshot | None,
        withheld: str | None,
        ts: float | None = None,
    ) -> NewEvent:
        if shot is not None:
            data["snapshot"] = ve.SnapshotInfo(
                width=shot.width, height=shot.height, faces_redacted=shot.faces, plates_redacted=shot.plates
            )
        elif withheld is not None:
            data["snapshot_withheld"] = withheld
        when = ts if ts is not None else (frame.ts_wall if frame is not None else time.time())
        location = self.location() if self.location is not None else None
        return ve.new_event(type_, data, when, location, shot.jpeg if shot is not None else None)

    async def _emit(self, events: list[NewEvent]) -> None:
        if not events:
            return
        if not self._commit_behind:
            await self._commit(events)
            return
        await self._commit_slots.acquire()  # a slow outbox slows the frames down rather than queue them without end
        task = asyncio.create_task(self._commit(events, release=True), name=f"commit:{self.name}")
        self._committing.add(task)
        task.add_done_callback(self._committing.discard)

    async def _committed(self) -> None:
        """Until every frame's events handed to the sink are committed (or failed)."""
        while self._committing:
            await asyncio.gather(*self._committing, return_exceptions=True)

    async def _commit(self, events: list[NewEvent], release: bool = False) -> None:
        start = time.perf_counter()
        try:
            accepted = await self.sink.put_many(events)
        except Exception as exc:
            self._events_failed += len(events)
            log.error("vision_events_not_stored", camera=self.name, events=len(events), error=str(exc))
            return
        finally:
            self._time("commit", time.perf_counter() - start)
            if release:
                self._commit_slots.release()
        for e, receipt in zip(events, accepted, strict=True):
            if receipt.withheld is not None:
                continue  # the event policy kept it from the outbox (the sink counts it)
            self._events[e.type] = self._events.get(e.type, 0) + 1
            self.observe_event(e, receipt.id)

    async def _tell_fusion(self, sighting: PlateSighting) -> None:
        if self.on_plate is None:
            return
        try:
            result = self.on_plate(sighting)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("plate_callback_failed", camera=self.name)

    def _time(self, stage: str, seconds: float) -> None:
        self._stage[stage].append(seconds)

    # ------------------------------------------------------------------ stats

    def stats(self) -> PipelineStats:
        now = time.monotonic()
        recent = [t for t in self._done if t >= now - 5.0]
        fps = (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6) if len(recent) >= 2 else 0.0
        return PipelineStats(
            camera=self.camera.stats(),
            fps=fps,
            frames_processed=self._frames,
            detection_passes=self._passes,
            frames_without_motion=self._still,
            tracks=len(self.tracker.confirmed()),
            events=dict(self._events),
            events_failed=self._events_failed,
            frame_errors=self._frame_errors,
            counted_crossings=self.counter.total,
            plates_read=self._plates_read,
            snapshots=self.snapshots.stats(),
            clips=self.clips.stats() if self.clips is not None else None,
            models=[part.stats() for part in self.parts.timed],
            models_loaded=list(self.parts.loaded),
            stage_ms={s: statistics.median(v) * 1000 for s, v in self._stage.items() if v},
            active_conditions=list(self.health.active),
            last_progress=self.last_progress,
        )
