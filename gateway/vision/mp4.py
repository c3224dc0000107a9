"""H.264 in MP4, encoded in memory with PyAV (its wheel carries FFmpeg and libx264).

Only redacted frames come here, and the file never exists on disk: the
container is written into a ``BytesIO``. x264 gets one thread, so that
encoding a clip leaves the other core to the pipeline.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np

_TIME_BASE = Fraction(1, 1000)  # frame times in milliseconds: frames need not be evenly spaced


def is_mp4(data: bytes) -> bool:
    """ISO base media (MP4): the first box is ``ftyp``."""
    return len(data) >= 8 and data[4:8] == b"ftyp"


def encode_mp4(frames: Sequence[np.ndarray], times: Sequence[float], crf: int, preset: str) -> bytes:
    """``frames`` (I420 planes as OpenCV's ``COLOR_BGR2YUV_I420`` makes them: height * 3/2 rows, one size)
    shown at ``times`` (seconds, increasing) as an MP4 file."""
    if not frames or len(frames) != len(times):
        raise ValueError("a clip needs frames, each with its time")
    rows, width = frames[0].shape[:2]
    height = rows * 2 // 3
    buf = io.BytesIO()
    span = max(times[-1] - times[0], 1e-3)
    rate = Fraction(max(1, round((len(frames) - 1) / span))) if len(frames) > 1 else Fraction(1)
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = _TIME_BASE
        stream.codec_context.thread_count = 1
        stream.options = {"crf": str(crf), "preset": preset}
        last = -1
        for image, t in zip(frames, times, strict=True):
            frame = av.VideoFrame.from_ndarray(image, format="yuv420p")
            pts = max(last + 1, int(round((t - times[0]) * 1000)))
            frame.pts, frame.time_base, last = pts, _TIME_BASE, pts
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buf.getvalue()
