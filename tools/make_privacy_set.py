"""Build tests/data/privacy/: labelled faces of 7 to 60 px at 768x576, 1000x563, 640x480, 1280x720 and 1920x1080.

The face boxes of the real frames were drawn by hand: each frame was looked
at enlarged six to eight times with a pixel grid over it, and every face a
person can tell as a face (frontal, three-quarter or profile; not the back of a
head, not a face hidden by an umbrella or too dim to tell) was boxed from the
hairline or brow to the chin. The boxes of the four face photos were proposed
by CenterFace and checked by eye. Everything else is derived from these: the
real frames scaled (and cut to 16:9) to each resolution, and composites where
the face photos, scaled so that their faces have chosen heights, are pasted on
the empty street of vtest.avi. Run from the repository root with the
workplace's media beside it: ``python -m tools.make_privacy_set``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# The workplace's media sits beside the checkout (or beside the folder of worktrees).
SHARED = next((p / "shared" / "data" for p in (ROOT.parent, ROOT.parent.parent) if (p / "shared").is_dir()), ROOT)
OUT = ROOT / "tests" / "data" / "privacy"
VIDEO = SHARED / "video" / "vtest.avi"

Box = tuple[float, float, float, float]

# By hand, in the frames' own pixels (768x576; street frame 1000x563).
VTEST_FACES: dict[int, list[Box]] = {
    200: [(631, 267, 642, 281), (722, 258, 733, 272), (683, 98, 690, 107), (494, 146, 501, 156)],
    350: [(492, 190, 500, 201), (707, 230, 714, 240), (681, 226, 690, 237), (393, 181, 400, 191), (396, 229, 405, 241)],
    640: [(123, 146, 131, 156)],
}
STREET = SHARED / "vehicles" / "street_00000100.jpg"
STREET_FACES: list[Box] = [(251, 257, 260, 268), (426, 257, 434, 267)]
# Checked by eye (see the module docstring).
PHOTOS: dict[str, list[Box]] = {
    "astronaut.png": [(182, 58, 270, 178)],
    "basketball1.png": [(70, 93, 103, 134), (511, 62, 549, 125)],
    "messi5.jpg": [(225, 93, 257, 135)],
    "voc2011_000003.jpg": [(464, 105, 499, 152), (230, 136, 263, 175)],
}
# Face heights (px) of the composites: each bucket a few times, in the band where people are.
COMPOSITE_HEIGHTS = [10, 11, 12, 14, 16, 18, 22, 26, 32, 40, 48]
SIZES = [(640, 480), (1280, 720), (1920, 1080)]


def frames(numbers: set[int]) -> dict[int, np.ndarray]:
    cap = cv2.VideoCapture(str(VIDEO))
    out: dict[int, np.ndarray] = {}
    i = 0
    while len(out) < len(numbers):
        ok, frame = cap.read()
        if not ok:
            break
        if i in numbers:
            out[i] = frame
        i += 1
    cap.release()
    return out


def empty_street() -> np.ndarray:
    cap = cv2.VideoCapture(str(VIDEO))
    stack = []
    for i in range(300):
        ok, frame = cap.read()
        if not ok:
            break
        if i % 6 == 0:
            stack.append(frame)
    cap.release()
    return np.median(np.stack(stack), axis=0).astype(np.uint8)


def scaled(boxes: list[Box], sx: float, sy: float, dx: float = 0, dy: float = 0) -> list[Box]:
    return [((b[0] - dx) * sx, (b[1] - dy) * sy, (b[2] - dx) * sx, (b[3] - dy) * sy) for b in boxes]


def to_16_9(image: np.ndarray, boxes: list[Box], size: tuple[int, int]) -> tuple[np.ndarray, list[Box]]:
    """Cut the middle band of a 4:3 frame to 16:9 and scale it to ``size``."""
    h, w = image.shape[:2]
    rows = int(round(w * 9 / 16))
    top = (h - rows) // 2
    crop = image[top : top + rows]
    sx, sy = size[0] / w, size[1] / rows
    kept = [b for b in boxes if b[1] >= top and b[3] <= top + rows]
    return cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC), scaled(kept, sx, sy, 0, top)


def composite(background: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, list[Box]]:
    """Head-and-shoulders cuts of the face photos (each face with one face size around it) pasted onto the
    street, scaled so that the faces have ``COMPOSITE_HEIGHTS``."""
    w, h = size
    canvas = cv2.resize(background, size, interpolation=cv2.INTER_CUBIC)
    cuts = []
    for name, boxes in PHOTOS.items():
        photo = cv2.imread(str(SHARED / "faces" / name))
        for b in boxes:
            fw, fh = b[2] - b[0], b[3] - b[1]
            x1, y1 = int(max(0, b[0] - fw)), int(max(0, b[1] - fh))
            x2, y2 = int(min(photo.shape[1], b[2] + fw)), int(min(photo.shape[0], b[3] + fh))
            cuts.append((photo[y1:y2, x1:x2], (b[0] - x1, b[1] - y1, b[2] - x1, b[3] - y1)))
    labels: list[Box] = []
    gap = int(0.02 * w)
    x, y, row_h = gap, int(0.1 * h), 0
    for i, target in enumerate(COMPOSITE_HEIGHTS):
        cut, face = cuts[i % len(cuts)]
        s = target / (face[3] - face[1])
        pw, ph = max(1, int(round(cut.shape[1] * s))), max(1, int(round(cut.shape[0] * s)))
        if x + pw > w - gap:
            x, y, row_h = gap, y + row_h + gap, 0
        if y + ph > h:
            raise ValueError(f"composite {size} is full at face height {target}")
        canvas[y : y + ph, x : x + pw] = cv2.resize(cut, (pw, ph), interpolation=cv2.INTER_AREA)
        sx, sy = pw / cut.shape[1], ph / cut.shape[0]
        labels.append((x + face[0] * sx, y + face[1] * sy, x + face[2] * sx, y + face[3] * sy))
        x += pw + gap
        row_h = max(row_h, ph)
    return canvas, labels


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    images: dict[str, tuple[np.ndarray, list[Box], str]] = {}
    got = frames(set(VTEST_FACES))
    for n, boxes in VTEST_FACES.items():
        images[f"vtest_{n:04d}_768x576.jpg"] = (got[n], boxes, f"vtest.avi frame {n}, as decoded")
    images["street_00000100_1000x563.jpg"] = (cv2.imread(str(STREET)), STREET_FACES, "street_00000100.jpg as is")
    frame200 = got[200]
    images["vtest_0200_640x480.jpg"] = (
        cv2.resize(frame200, (640, 480), interpolation=cv2.INTER_AREA),
        scaled(VTEST_FACES[200], 640 / 768, 480 / 576),
        "vtest.avi frame 200 scaled to 640x480",
    )
    for n, size in ((350, (1280, 720)), (200, (1280, 720)), (350, (1920, 1080)), (200, (1920, 1080))):
        image, boxes = to_16_9(got[n], VTEST_FACES[n], size)
        images[f"vtest_{n:04d}_{size[0]}x{size[1]}.jpg"] = (
            image,
            boxes,
            f"vtest.avi frame {n}, middle 768x432 scaled to {size[0]}x{size[1]}",
        )
    street = empty_street()
    for size in SIZES:
        image, boxes = composite(street, size)
        images[f"composite_{size[0]}x{size[1]}.jpg"] = (
            image,
            boxes,
            f"cuts of the six faces of the four face photos scaled to face heights {COMPOSITE_HEIGHTS} px on the "
            "empty street of vtest.avi "
            f"(per-pixel median of frames 0-299), {size[0]}x{size[1]}",
        )
    labels = {}
    for name, (image, boxes, how) in images.items():
        cv2.imwrite(str(OUT / name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        labels[name] = {
            "width": image.shape[1],
            "height": image.shape[0],
            "made": how,
            "faces": [{"box": [round(v, 1) for v in b], "height": round(b[3] - b[1], 1)} for b in boxes],
        }
    (OUT / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")


if __name__ == "__main__":
    main()
