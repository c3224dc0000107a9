"""Is it a redacted clip? The receiver stores and serves only an MP4 that decodes as H.264 video.

An ``ftyp`` box at the start proves nothing about the rest, so :func:`mp4_problem` has PyAV
(FFmpeg inside its wheel) open the container from memory, requires one H.264 video stream of a
size a pole's camera can make and no other stream (no audio: a pole records none), and decodes
every frame: a file that only looks like a clip is refused before it is stored or served.
"""

from __future__ import annotations

import io

MAX_SIDE = 4096  # pixels: clips are cut from a camera's frames, scaled down
MAX_FRAMES = 20_000  # a few minutes at 25 fps; the pole's clips are seconds long


def mp4_problem(data: bytes) -> str | None:
    """Why ``data`` is not an H.264 MP4 clip, or None."""
    if len(data) < 8 or data[4:8] != b"ftyp":
        return "no MP4 'ftyp' box at the start"
    import av  # imported on first use: a receiver that gets no clips never loads FFmpeg

    try:
        with av.open(io.BytesIO(data), "r", format="mp4") as container:
            streams = list(container.streams)
            if len(streams) != 1 or not isinstance(streams[0], av.VideoStream):
                return f"a clip has exactly one video stream and nothing else, not {len(streams)} stream(s)"
            stream = streams[0]
            if stream.codec_context.name != "h264":
                return f"video must be H.264, not {stream.codec_context.name}"
            width, height = stream.width, stream.height
            if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
                return f"video of {width}x{height} pixels"
            frames = 0
            for _ in container.decode(stream):
                frames += 1
                if frames > MAX_FRAMES:
                    return f"more than {MAX_FRAMES} frames"
    except (av.FFmpegError, ValueError, OSError) as exc:
        return f"does not decode: {exc}"
    return None if frames else "no frame decodes"
