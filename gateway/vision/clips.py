"""Event clips: a ring buffer of redacted frames in memory, cut into H.264 clips when something happens.

Only frames that :class:`~gateway.vision.videoredact.VideoRedactor` has
covered come here, scaled down to ``max_width``; nothing here ever holds a raw
frame, and nothing is written to disk. A trigger (a speed violation, a vehicle
crossing a counting line, tamper, the status page's button) asks for the
``pre_s`` seconds before it and the ``post_s`` after; a trigger while a clip is
being collected extends that clip (up to ``max_s``) and is listed in it. The
ring and the clips being collected share one memory bound, ``max_bytes``.

If redaction fails, :meth:`ClipRecorder.fail` drops the ring and every clip
being collected: a clip with a gap, or with a frame that could not be
covered, is never made.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import structlog

from gateway.vision.config import ClipConfig
from gateway.vision.videoredact import RedactedFrame

log = structlog.get_logger(__name__)

CLIP = "clip"


@dataclass(frozen=True, slots=True)
class ClipFrame:
    """A redacted frame as the ring keeps it: scaled for the clip, as I420 (half the bytes of BGR, and what
    H.264 takes)."""

    t: float
    ts_wall: float
    i420: np.ndarray
    faces: int
    plates: int


@dataclass(slots=True)
class ClipRequest:
    """A clip being collected: frames from ``start`` to ``end`` (stream seconds) and what asked for it."""

    start: float
    end: float
    first_trigger: float
    triggers: list[dict[str, Any]]
    frames: list[ClipFrame] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ClipStats:
    enabled: bool
    triggers: int
    clips: int
    withheld: int
    frames_buffered: int
    buffer_bytes: int
    frames_dropped: int
    last_error: str | None


class ClipRecorder:
    """The ring buffer and the clips being collected, for one camera. Used from the event loop only."""

    def __init__(self, config: ClipConfig, camera: str) -> None:
        self.config = config
        self.camera = camera
        self.ring: deque[ClipFrame] = deque()
        self.collecting: list[ClipRequest] = []
        self._bytes = 0
        self._last_kept: float | None = None
        self._seen_events: deque[str] = deque(maxlen=64)
        self._triggers = 0
        self._clips = 0
        self._withheld = 0
        self._dropped = 0
        self._last_error: str | None = None

    @property
    def buffer_bytes(self) -> int:
        return self._bytes

    def wants(self, t: float) -> bool:
        """Whether a frame at stream time ``t`` is kept (the fps cap); call once per frame."""
        if self._last_kept is not None and 0 <= t - self._last_kept < 1.0 / self.config.fps * 0.999:
            return False
        self._last_kept = t
        return True

    def trigger(self, kind: str, t: float, ts_wall: float, **detail: Any) -> bool:
        """Ask for a clip around stream time ``t``; False when ``kind`` is not a configured trigger."""
        if not self.config.enabled or kind not in self.config.triggers:
            return False
        self._triggers += 1
        entry = {"type": kind, "ts": round(ts_wall, 3), **{k: v for k, v in detail.items() if v is not None}}
        for request in self.collecting:
            if request.end > t - self.config.pre_s:
                request.triggers.append(entry)
                request.end = min(max(request.end, t + self.config.post_s), request.start + self.config.max_s)
                return True
        start = max(t - self.config.pre_s, t + self.config.post_s - self.config.max_s)
        request = ClipRequest(start, t + self.config.post_s, t, [entry])
        request.frames = [f for f in self.ring if f.t >= start]
        self.collecting.append(request)
        return True

    def observe(self, event_type: str, event_id: str, data: dict[str, Any], t: float, ts_wall: float) -> None:
        """An event was committed (by this pipeline or another producer): a trigger if it is one for this camera."""
        if event_id in self._seen_events or data.get("camera") != self.camera:
            return
        self._seen_events.append(event_id)
        if event_type == "traffic_violation":
            self.trigger("traffic_violation", t, ts_wall, event_id=event_id, speed_kmh=data.get("speed_kmh"))
        elif event_type == "tamper" and data.get("active"):
            self.trigger("tamper", t, ts_wall, event_id=event_id, condition=data.get("kind"))

    def add(self, frame: RedactedFrame) -> list[ClipRequest]:
        """Keep one redacted frame; the clips that are now complete."""
        image = frame.image
        height, width = image.shape[:2]
        scale = min(1.0, self.config.max_width / width)
        size = (int(width * scale) // 2 * 2, int(height * scale) // 2 * 2)  # I420 wants even sides
        if size != (width, height):
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        i420 = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
        kept = ClipFrame(frame.t, frame.ts_wall, i420, frame.faces, frame.plates)
        self.ring.append(kept)
        self._bytes += i420.nbytes
        for request in self.collecting:
            if request.start <= frame.t <= request.end:
                request.frames.append(kept)
        done = [r for r in self.collecting if frame.t >= r.end]
        self.collecting = [r for r in self.collecting if frame.t < r.end]
        self._trim(frame.t)
        return done

    def finish(self) -> list[ClipRequest]:
        """The clips being collected, cut at the last frame (the video or the daemon ends)."""
        done = [r for r in self.collecting if r.frames]
        self.collecting = []
        return done

    def fail(self, reason: str) -> None:
        """Redaction failed: forget every frame and every clip being collected."""
        if self.collecting or self._last_error is None:
            log.error("clips_withheld", camera=self.camera, reason=reason, dropped=len(self.collecting))
        self._withheld += len(self.collecting)
        self.collecting = []
        self.ring.clear()
        self._bytes = 0
        self._last_error = reason

    def made(self) -> None:
        self._clips += 1
        self._last_error = None

    def withheld(self, reason: str) -> None:
        self._withheld += 1
        self._last_error = reason

    def stats(self) -> ClipStats:
        return ClipStats(
            enabled=self.config.enabled,
            triggers=self._triggers,
            clips=self._clips,
            withheld=self._withheld,
            frames_buffered=len(self.ring),
            buffer_bytes=self._bytes,
            frames_dropped=self._dropped,
            last_error=self._last_error,
        )

    def _trim(self, now: float) -> None:
        """Drop frames no clip needs any more, and the oldest past ``max_bytes`` (counted)."""
        keep_from = min([now - self.config.pre_s] + [r.start for r in self.collecting])
        while self.ring and self.ring[0].t < keep_from:
            self._forget()
        # The clips being collected hold frames of the ring only, so the ring's bytes are all there is.
        while self.ring and self._bytes > self.config.max_bytes:
            oldest = self._forget()
            self._dropped += 1
            for request in self.collecting:
                if request.frames and request.frames[0] is oldest:
                    request.frames.pop(0)

    def _forget(self) -> ClipFrame:
        frame = self.ring.popleft()
        self._bytes -= frame.i420.nbytes
        return frame
