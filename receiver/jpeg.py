"""Is it a JPEG? The receiver stores and serves only what decodes as one.

Starting with ``FF D8 FF`` proves nothing: anything may follow (HTML a browser could be led
to run). :func:`jpeg_problem` walks the marker segments (a frame header with a size a pole's
camera can make, a scan, the end marker last) and then has OpenCV decode the picture at an
eighth of its size, which reads every entropy-coded byte but allocates little. OpenCV is
imported on first use: a receiver that gets no media never pays for it.
"""

from __future__ import annotations

import struct
from typing import Any

MAX_SIDE = 16_384  # pixels: no camera on a pole makes more
MAX_PIXELS = 100_000_000
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7 carry no length
_cv2: Any = None


def _structure_problem(data: bytes) -> str | None:
    if not data.startswith(b"\xff\xd8"):
        return "no JPEG start-of-image marker"
    if not data.endswith(b"\xff\xd9"):
        return "no JPEG end-of-image marker at the end"
    i, size, scans, end = 2, None, 0, len(data) - 2
    while i < end:
        if data[i] != 0xFF:
            return f"not a JPEG marker at byte {i}"
        while i < end and data[i + 1] == 0xFF:  # fill bytes
            i += 1
        marker = data[i + 1]
        if marker in _STANDALONE:
            i += 2
            continue
        if marker == 0xD9:
            return "JPEG data after the end-of-image marker"
        if i + 4 > end:
            return "JPEG segment cut short"
        (length,) = struct.unpack_from(">H", data, i + 2)
        if length < 2 or i + 2 + length > end:
            return "JPEG segment of an impossible length"
        if marker in _SOF:
            if length < 8:
                return "JPEG frame header too short"
            height, width = struct.unpack_from(">HH", data, i + 5)
            size = (width, height)
        i += 2 + length
        if marker == 0xDA:  # a scan: entropy-coded data up to the next marker that is not a stuffed 00 or an RST
            scans += 1
            while i < end:
                if data[i] == 0xFF and data[i + 1] != 0x00 and not 0xD0 <= data[i + 1] <= 0xD7:
                    break
                i += 1
    if size is None:
        return "no JPEG frame header"
    if scans == 0:
        return "no JPEG scan"
    width, height = size
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE and width * height <= MAX_PIXELS):
        return f"JPEG of {width} x {height} pixels: beyond what a pole makes"
    return None


def jpeg_problem(data: bytes) -> str | None:
    """Why ``data`` is not a JPEG the receiver keeps, or None. Blocking (decodes): run it in a thread."""
    problem = _structure_problem(data)
    if problem is not None:
        return problem
    global _cv2
    if _cv2 is None:
        import cv2

        _cv2 = cv2
    import numpy as np

    picture = _cv2.imdecode(np.frombuffer(data, np.uint8), _cv2.IMREAD_REDUCED_GRAYSCALE_8)
    return None if picture is not None and picture.size else "does not decode as a JPEG"
