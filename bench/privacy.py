"""Face redaction recall by face size, over-covering and cost, on the hand-labelled set in tests/data/privacy/.

Usage: python bench/privacy.py [--data DIR] [--threads 2] [--repeat 1]

Each labelled image goes through what a snapshot goes through: NanoDet for the
people and vehicle boxes, then the redactor (whole-frame, person-head and
tiled small-face passes, plates), as ``SnapshotMaker`` calls it on a camera's
first frame (every tile scanned). A face counts as covered when at least 90% of
its labelled box lies under the covered regions, and as redacted when also
``residual_detail`` of the JPEG-encoded result (quality 80, as the pole's
snapshots) stays under the README's bar of 0.3.

Prints one line per image, then one JSON object as the last line:
``recall_by_size`` (buckets "10-16", "16-32", "32+" px of face height, over all
resolutions), ``recall_by_size_per_resolution``, ``smallest_face_covered`` and
``all_covered_from`` (the least face height from which every labelled face of
that resolution was covered) per resolution, ``false_cover_fraction`` (the
share of all image area that is covered and holds no face, a face counting
with the redaction margin around it), ``ms_per_frame`` per resolution
(detector and redaction) and faces under 10 px (not a target) separately.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.vision.config import InferenceConfig, VisionConfig  # noqa: E402
from gateway.vision.setup import load_parts  # noqa: E402
from models.detection import PEOPLE, Box, covered_fraction, expand, to_pixels  # noqa: E402
from models.redact import REDACTED_BELOW, residual_detail  # noqa: E402

DATA = ROOT / "tests" / "data" / "privacy"
BUCKETS = (("10-16", 10.0, 16.0), ("16-32", 16.0, 32.0), ("32+", 32.0, float("inf")))
COVERED = 0.9


def bucket(height: float) -> str:
    for name, low, high in BUCKETS:
        if low <= height < high:
            return name
    return "<10"


def ratio(hit: int, total: int) -> float | None:
    return round(hit / total, 3) if total else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads per model")
    parser.add_argument("--repeat", type=int, default=1, help="time each image this many times (median)")
    args = parser.parse_args()
    labels = json.loads((args.data / "labels.json").read_text())
    config = VisionConfig(inference=InferenceConfig(threads=args.threads))
    parts = load_parts(config)
    margin = config.redaction.margin

    hits: dict[str, dict[str, list[int]]] = {}  # resolution -> bucket -> [covered, redacted, total]
    heights: dict[str, list[tuple[float, bool]]] = {}
    ms: dict[str, list[float]] = {}
    false_px = 0
    covered_px = 0
    all_px = 0
    for name, entry in labels.items():
        image = cv2.imread(str(args.data / name), cv2.IMREAD_COLOR)
        assert image is not None, name
        resolution = f"{entry['width']}x{entry['height']}"
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            found = parts.detector.detect(image)
            people = [d.box for d in found if d.label in PEOPLE]
            vehicles = [d.box for d in found if d.label not in PEOPLE]
            redaction = parts.redactor.redact(image, people, vehicles)
            times.append(time.perf_counter() - start)
        ms.setdefault(resolution, []).append(statistics.median(times) * 1000)
        jpeg = cv2.imdecode(cv2.imencode(".jpg", redaction.image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1], cv2.IMREAD_COLOR)
        regions = [r.box for r in redaction.regions]
        height, width = image.shape[:2]
        covered = np.zeros((height, width), bool)
        for r in regions:
            x1, y1, x2, y2 = to_pixels(r)
            covered[y1:y2, x1:x2] = True
        face_mask = np.zeros_like(covered)
        line = []
        for face in entry["faces"]:
            box: Box = tuple(face["box"])  # type: ignore[assignment]
            x1, y1, x2, y2 = to_pixels(expand(box, margin, width, height))
            face_mask[y1:y2, x1:x2] = True
            is_covered = covered_fraction(box, regions) >= COVERED
            fx1, fy1, fx2, fy2 = to_pixels(box)
            residual = residual_detail(image[fy1:fy2, fx1:fx2], jpeg[fy1:fy2, fx1:fx2])
            is_redacted = is_covered and residual < REDACTED_BELOW
            counts = hits.setdefault(resolution, {}).setdefault(bucket(face["height"]), [0, 0, 0])
            counts[0] += is_covered
            counts[1] += is_redacted
            counts[2] += 1
            heights.setdefault(resolution, []).append((face["height"], is_covered))
            state = "ok" if is_redacted else (f"covered(residual {residual:.2f})" if is_covered else "MISSED")
            line.append(f"{face['height']:.0f}px:{state}")
        false_px += int((covered & ~face_mask).sum())
        covered_px += int(covered.sum())
        all_px += height * width
        print(f"{name}: {ms[resolution][-1]:.0f} ms, {len(regions)} regions, faces {' '.join(line)}", file=sys.stderr)

    def merged(buckets: list[str]) -> dict[str, float | None]:
        out = {}
        for b in buckets:
            covered = sum(h[b][0] for h in hits.values() if b in h)
            total = sum(h[b][2] for h in hits.values() if b in h)
            out[b] = ratio(covered, total)
        return out

    names = [b[0] for b in BUCKETS]
    per_resolution = {res: {b: ratio(h[b][0], h[b][2]) for b in names if b in h} for res, h in sorted(hits.items())}
    smallest = {res: min((fh for fh, ok in hs if ok and fh >= 10), default=None) for res, hs in sorted(heights.items())}
    all_from: dict[str, float | None] = {}
    for res, hs in sorted(heights.items()):
        missed = [fh for fh, ok in hs if not ok and fh >= 10]
        covered_sizes = sorted(fh for fh, ok in hs if ok and fh >= 10 and fh > max(missed, default=0))
        all_from[res] = covered_sizes[0] if covered_sizes else None
    summary = {
        "bench": "privacy",
        "images": len(labels),
        "faces": sum(len(e["faces"]) for e in labels.values()),
        "recall_by_size": merged(names),
        "redacted_by_size": {
            b: ratio(
                sum(h[b][1] for h in hits.values() if b in h),
                sum(h[b][2] for h in hits.values() if b in h),
            )
            for b in names
        },
        "recall_under_10px": merged(["<10"])["<10"],
        "recall_by_size_per_resolution": per_resolution,
        "smallest_face_covered": smallest,
        "all_covered_from": all_from,
        "false_cover_fraction": round(false_px / all_px, 4),
        "covered_fraction": round(covered_px / all_px, 4),
        "ms_per_frame": {res: round(statistics.median(v), 1) for res, v in sorted(ms.items())},
        "onnx_threads": args.threads,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
