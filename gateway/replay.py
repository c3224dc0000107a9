"""``smartpole replay INPUT --out DIR``: the pole's vision pipeline over a video or a folder of images.

For technicians and tests. The same pipeline code runs as on the pole, and
its events go into a real outbox in a temporary directory, exactly as the pole
commits them. The committed bodies are then read back and written to
``DIR/events.jsonl`` in sequence order, each line being the committed body
byte for byte with two keys appended before its closing brace: ``source``
(the image's file name, or the video frame number) and ``snapshot`` (the path
of its redacted JPEG relative to DIR, or null). The JPEGs are the outbox's own
media, written to ``DIR/snapshots/``.

With ``clips`` (``--clips``, videos only), the video is also cut into redacted
clips back to back (each ``pre_s + post_s`` of ``[vision.clips]`` long, every
kept frame redacted by the same video redactor as on the pole); their MP4s go
to ``DIR/clips/`` and their ``clip`` events' lines get a third key, ``clip``.

Replay reports every analysed frame that shows people or vehicles (presence
every frame, a full-size snapshot with each, tracks confirmed on their first
detection); images are analysed one by one, each as a new scene, with the
motion gate and camera-health checks off. The configuration file, if given,
is the pole's own (validated whole); its ``[vision]`` and ``[privacy.plates]``
tables are used.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import orjson

from gateway.config import PoleConfig
from gateway.configfile import ConfigError, load_config
from gateway.logs import configure_logging
from gateway.tmpfs import use_memory_for_temp_files
from gateway.vision.config import VisionConfig
from gateway.vision.mp4 import is_mp4
from gateway.vision.pipeline import VisionParts, VisionPipeline
from gateway.vision.privacy import PlatePolicy
from gateway.vision.setup import load_parts, make_executor
from hal.camera.base import Camera, CameraConfig, CameraError
from hal.camera.opencv import OpenCVCamera, probe_video
from hal.camera.stills import IMAGE_SUFFIXES, StillImages
from models.registry import ModelError
from sync.events import Accepted, NewEvent
from sync.outbox import Outbox, OutboxConfig

EXIT_OK = 0
EXIT_SKIPPED = 1
EXIT_BAD_INPUT = 2

_FRAME_WAIT_S = 30.0  # a decoder this slow on one frame is stuck


class _SourceSink:
    """Commits to the outbox and remembers which frame each event came from."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.source: str | int | None = None
        self.sources: dict[str, str | int | None] = {}

    async def put(self, event: NewEvent) -> Accepted:
        accepted = await self.outbox.put(event)
        self.sources[accepted.id] = self.source
        return accepted

    async def put_many(self, events: list[NewEvent]) -> list[Accepted]:
        accepted = await self.outbox.put_many(events)
        for a in accepted:
            self.sources[a.id] = self.source
        return accepted


def _fail(message: str) -> int:
    print(f"smartpole replay: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def load_settings(config_path: Path | None) -> PoleConfig:
    if config_path is None:
        return PoleConfig()
    return load_config(config_path, PoleConfig)


def replay_vision(config: VisionConfig, images: bool, clips: bool = False) -> VisionConfig:
    """The configuration adjusted for replay (see the module docstring)."""
    update: dict[str, Any] = {
        "clips": config.clips.model_copy(update={"enabled": clips, "triggers": ["manual"] if clips else []}),
        "presence": config.presence.model_copy(update={"every_frame": True}),
        "snapshots": config.snapshots.model_copy(update={"presence_interval_s": 0.0, "max_width": None}),
        "tracker": config.tracker.model_copy(update={"min_hits": 1}),
    }
    if images:
        update["motion"] = config.motion.model_copy(update={"enabled": False})
        update["health"] = config.health.model_copy(update={"enabled": False})
    return config.model_copy(update=update)


def replay_main(input: Path, out: Path, config_path: Path | None, clips: bool = False) -> int:
    """Run the replay; the exit code (0 ok, 1 some images skipped, 2 bad input, config or models)."""
    configure_logging("warning", "console", stream=sys.stderr)
    # Every failure is reported here in one line; OpenCV's own warnings would only repeat it.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    use_memory_for_temp_files()
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    if not input.exists():
        return _fail(f"{input}: no such file or directory")
    images = input.is_dir()
    if images and clips:
        return _fail(f"{input}: clips need a video, not a folder of images")
    if images:
        paths = sorted(p for p in input.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            return _fail(f"{input}: no image files (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        camera: Camera = StillImages(paths)
    else:
        try:
            probe_video(input)
        except CameraError as exc:
            return _fail(str(exc))
        camera = OpenCVCamera(CameraConfig(name="replay", source=str(input), kind="file", rate="max", at_end="stop"))
    vision = replay_vision(settings.vision, images, clips)
    try:
        parts = load_parts(vision)
    except ModelError as exc:
        return _fail(str(exc))
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "snapshots").mkdir(exist_ok=True)
        (out / "clips").mkdir(exist_ok=True)
    except OSError as exc:
        return _fail(f"{out}: cannot create the output directory: {exc.strerror or exc}")
    for old in [*(out / "snapshots").glob("*.jpg"), *(out / "clips").glob("*.mp4")]:
        old.unlink()
    written = asyncio.run(_replay(camera, vision, settings.privacy.plates, parts, out, images))
    print(f"smartpole replay: {written} events in {out / 'events.jsonl'}", file=sys.stderr)
    if isinstance(camera, StillImages) and camera.unreadable:
        for path, reason in camera.unreadable:
            print(f"smartpole replay: {path}: {reason}; skipped", file=sys.stderr)
        return EXIT_SKIPPED
    return EXIT_OK


async def _replay(
    camera: Camera, vision: VisionConfig, policy: PlatePolicy, parts: VisionParts, out: Path, images: bool
) -> int:
    executor = make_executor(vision)
    with tempfile.TemporaryDirectory(prefix="smartpole-replay-") as tmp:
        outbox = await Outbox.open(
            Path(tmp) / "outbox.db", OutboxConfig(durability="normal", max_bytes=2**40, commit_interval_ms=0)
        )
        sink = _SourceSink(outbox)
        pipeline = VisionPipeline(camera, parts, vision, policy, sink, executor)
        names = [p.name for p in camera.paths] if isinstance(camera, StillImages) else []
        c = vision.clips
        next_clip = None  # stream time of the next back-to-back manual trigger
        camera.start()
        try:
            while True:
                frame = await camera.frame(timeout=_FRAME_WAIT_S)
                if frame is None:
                    if camera.finished:
                        break
                    raise CameraError(f"{camera.config.source}: no frame decoded for {_FRAME_WAIT_S:.0f} s")
                if images:
                    pipeline.reset_scene()
                sink.source = names[frame.position] if images and frame.position is not None else frame.position
                await pipeline.process(frame)
                if c.enabled:
                    next_clip = frame.t_stream + c.pre_s if next_clip is None else next_clip
                    if frame.t_stream >= next_clip and pipeline.trigger_clip():
                        next_clip += c.pre_s + c.post_s
            if next_clip is not None and pipeline.clips is not None and not pipeline.clips.collecting:
                pipeline.trigger_clip()  # the tail after the last whole clip: cut short at the end
            await pipeline.flush()
        finally:
            await asyncio.to_thread(camera.stop)
            executor.shutdown(wait=True)
        written = await _write(outbox, sink, out)
        await outbox.close()
    return written


async def _write(outbox: Outbox, sink: _SourceSink, out: Path) -> int:
    records = sorted(await outbox.next_batch(len(sink.sources) + 1, 2**62), key=lambda r: r.seq)
    with (out / "events.jsonl").open("w", encoding="utf-8") as f:
        for record in records:
            snapshot = clip = None
            if record.media:
                media = await outbox.media(record.media[0])
                if media is not None:
                    event_type = orjson.loads(record.body)["type"]
                    if is_mp4(media):
                        clip = f"clips/{record.seq:06d}-{event_type}.mp4"
                        (out / clip).write_bytes(media)
                    else:
                        snapshot = f"snapshots/{record.seq:06d}-{event_type}.jpg"
                        (out / snapshot).write_bytes(media)
            keys: dict[str, Any] = {"source": sink.sources.get(record.id), "snapshot": snapshot}
            if clip is not None:
                keys["clip"] = clip
            extra = orjson.dumps(keys).decode()
            f.write(record.body[:-1] + "," + extra[1:] + "\n")
    return len(records)
