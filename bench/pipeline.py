"""End-to-end vision pipeline throughput on vtest.avi at 640x480 and 1280x720.

Usage: python bench/pipeline.py [--video PATH] [--frames N] [--threads 2]

For each size the video is first re-encoded at that size (MPEG-4, in a
temporary directory), then, in a fresh process, read back by the real camera code (a file camera
that hands over every frame) into the real pipeline: motion gate, NanoDet,
tracking, a counting line, plate reading, face and plate redaction and JPEG
encoding for the snapshots the pole configuration calls for, and commits to a
real SQLite outbox (durability "full", fsync per commit). Each size runs in
its own process so that its peak RSS is its own. The decode stage is timed
separately, on a decode-only pass over the same file.

fps counts every frame of the file over the wall time from the first frame to
the last commit. Without clips a frame is redacted and encoded only when an
event carries its picture (or the status page's picture is due); the
``*_every_frame_redacted`` runs turn clips on with the same pole settings
otherwise: every frame is redacted by the video redactor into the clip ring
buffer, and a clip (5 s before, 5 s after) is cut and encoded, on its own
thread, whenever a person or vehicle crosses the counting line (first
``--every-frame-frames`` frames, 300 by default). The last line printed is
one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.tmpfs import use_memory_for_temp_files  # noqa: E402
from gateway.vision.config import (  # noqa: E402
    ALL_LABELS,
    ClipConfig,
    DetectionConfig,
    InferenceConfig,
    LineConfig,
    VisionConfig,
)
from gateway.vision.pipeline import VisionPipeline  # noqa: E402
from gateway.vision.privacy import PlatePolicy  # noqa: E402
from gateway.vision.setup import load_parts, make_executor  # noqa: E402
from hal.camera.base import CameraConfig  # noqa: E402
from hal.camera.opencv import OpenCVCamera  # noqa: E402
from sync.outbox import Outbox, OutboxConfig  # noqa: E402

# The whole 80 s of vtest.avi when the workplace's media is beside the checkout, else the 12 s cut in tests/data.
_FULL_VIDEO = ROOT.parent / "shared" / "data" / "video" / "vtest.avi"
DEFAULT_VIDEO = _FULL_VIDEO if _FULL_VIDEO.exists() else ROOT / "tests" / "data" / "video" / "vtest_12s.avi"
SIZES = ((640, 480), (1280, 720))


def transcode(src: Path, dst: Path, size: tuple[int, int], frames: int) -> int:
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    n = 0
    while n < frames:
        ok, image = cap.read()
        if not ok:
            break
        writer.write(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR))
        n += 1
    writer.release()
    cap.release()
    return n


def decode_ms(path: Path) -> float:
    cap = cv2.VideoCapture(str(path))
    times = []
    while True:
        start = time.perf_counter()
        ok, _ = cap.read()
        if not ok:
            break
        times.append(time.perf_counter() - start)
    cap.release()
    return statistics.median(times) * 1000


def bench_config(threads: int, every_frame: bool) -> VisionConfig:
    # Every frame of the file is kept for clips (the file camera hands them all over; vtest is 10 fps).
    clips = ClipConfig(enabled=True, fps=60.0, line_classes=list(ALL_LABELS)) if every_frame else ClipConfig()
    return VisionConfig(
        inference=InferenceConfig(threads=threads),
        detection=DetectionConfig(interval_frames=3 if every_frame else 1),
        lines=[LineConfig(name="middle", start=(0.0, 0.5), end=(1.0, 0.5))],
        clips=clips,
    )


async def run_pipeline(video: Path, workdir: Path, threads: int, every_frame: bool) -> dict[str, object]:
    config = bench_config(threads, every_frame)
    parts = load_parts(config)
    executor = make_executor(config)
    outbox = await Outbox.open(workdir / "outbox.db", OutboxConfig(durability="full", max_bytes=10**10))
    camera = OpenCVCamera(CameraConfig(name="bench", source=str(video), kind="file", rate="max", at_end="stop"))
    # As the daemon runs it: events commit behind the frame loop, in the outbox's default window.
    pipeline = VisionPipeline(camera, parts, config, PlatePolicy(), outbox, executor, commit_behind=True)
    stop = asyncio.Event()
    start = time.perf_counter()
    await pipeline.run(stop)
    elapsed = time.perf_counter() - start
    stats = pipeline.stats()
    backlog = outbox.backlog
    await outbox.close()
    executor.shutdown()
    return {
        "frames": stats.frames_processed,
        "seconds": round(elapsed, 2),
        "fps": round(stats.frames_processed / elapsed, 2),
        "stage_ms": {k: round(v, 2) for k, v in stats.stage_ms.items()},
        "detection_passes": stats.detection_passes,
        "frames_without_motion": stats.frames_without_motion,
        "snapshots": stats.snapshots.encoded,
        "redactions": stats.snapshots.redactions,
        "clips": (
            {
                "clips": stats.clips.clips,
                "withheld": stats.clips.withheld,
                "ring_frames_dropped": stats.clips.frames_dropped,
                "video_redactor_passes": pipeline.video.scans if pipeline.video is not None else None,
            }
            if stats.clips is not None
            else None
        ),
        "events": stats.events,
        "committed": backlog,
        "models": {m.name: round(m.median_ms, 2) for m in stats.models if m.median_ms is not None},
    }


def one_size(clip: Path, threads: int, every_frame: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="smartpole-bench-") as tmp:
        result = asyncio.run(run_pipeline(clip, Path(tmp), threads, every_frame))
    result["rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["stage_ms"] = {"decode": round(decode_ms(clip), 2), **result["stage_ms"]}  # type: ignore[dict-item]
    return result


def main() -> None:
    use_memory_for_temp_files()  # as the daemon does: tesseract's plate crops go through memory
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--frames", type=int, default=10**6, help="use at most this many frames of the video")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads per model")
    parser.add_argument(
        "--every-frame-frames", type=int, default=300, help="frames of the runs where every frame is redacted"
    )
    parser.add_argument("--clip", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--every-frame", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clip:
        print(json.dumps(one_size(args.clip, args.threads, args.every_frame)))
        return
    results: dict[str, dict[str, object]] = {}
    runs = [(f"{w}x{h}", (w, h), args.frames, False) for w, h in SIZES]
    every = min(args.frames, args.every_frame_frames)
    runs += [(f"{w}x{h}_every_frame_redacted", (w, h), every, True) for w, h in SIZES]
    with tempfile.TemporaryDirectory(prefix="smartpole-bench-") as tmp:
        for name, size, frames, every_frame in runs:
            clip = Path(tmp) / f"vtest_{name}.avi"
            transcode(args.video, clip, size, frames)
            cmd = [sys.executable, __file__, "--clip", str(clip), "--threads", str(args.threads)]
            cmd += ["--every-frame"] if every_frame else []
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results[name] = json.loads(out)
            print(f"{name}: {out}", file=sys.stderr)
    summary: dict[str, object] = {
        "bench": "pipeline",
        "video": args.video.name,
        "outbox_durability": "full",
        "onnx_threads": args.threads,
    }
    for run, r in results.items():
        summary[f"fps_{run}"] = r["fps"]
    summary["rss_mb"] = max(float(r["rss_mb"]) for r in results.values())  # type: ignore[arg-type]
    for run, r in results.items():
        summary[f"stage_ms_{run}"] = r["stage_ms"]
        summary[f"detail_{run}"] = {k: v for k, v in r.items() if k not in ("fps", "stage_ms")}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
