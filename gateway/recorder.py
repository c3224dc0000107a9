"""The sink the daemon hands to its producers: the outbox, plus a short memory of what went in.

The status page lists the newest events with their pictures and plays the
newest clips, and Prometheus counts events by type; all come from here rather
than from the outbox, which forgets an event as soon as the receiver has it.
Watchers hear of every accepted event (the clip recorders take their triggers
from other producers' events this way).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.vision.mp4 import is_mp4
from sync.events import Accepted, EventSink, NewEvent

RECENT_EVENTS = 25
RECENT_CLIPS = 3  # clips are megabytes: the status page keeps only the newest few in memory

Watcher = Callable[[NewEvent, Accepted], None]


@dataclass(frozen=True, slots=True)
class RecentEvent:
    id: str
    seq: int
    type: str
    priority: str
    ts: float
    data: dict[str, Any]
    picture: bytes | None  # the event's redacted JPEG, kept for the status page's thumbnail
    clip: bool = False  # the event's media is a redacted MP4 (kept among the newest clips)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seq": self.seq,
            "type": self.type,
            "priority": self.priority,
            "ts": self.ts,
            "data": self.data,
            "thumb": self.picture is not None,
            "clip": self.clip,
        }


class RecordingSink:
    """Puts into ``sink`` and remembers the last events that were accepted."""

    def __init__(self, sink: EventSink, on_event: Callable[[str], None] | None = None) -> None:
        self.sink = sink
        self.on_event = on_event
        self.recent: deque[RecentEvent] = deque(maxlen=RECENT_EVENTS)
        self.clips: deque[tuple[str, bytes]] = deque(maxlen=RECENT_CLIPS)
        self.watchers: list[Watcher] = []

    def _remember(self, event: NewEvent, accepted: Accepted) -> None:
        media = event.media[0] if event.media else None
        clip = media is not None and is_mp4(media)
        if clip and media is not None:
            self.clips.appendleft((accepted.id, media))
        self.recent.appendleft(
            RecentEvent(
                accepted.id,
                accepted.seq,
                event.type,
                event.priority.label,
                event.ts,
                dict(event.data),
                None if clip else media,
                clip,
            )
        )
        if self.on_event is not None:
            self.on_event(event.type)
        for watch in self.watchers:
            watch(event, accepted)

    async def put(self, event: NewEvent) -> Accepted:
        accepted = await self.sink.put(event)
        self._remember(event, accepted)
        return accepted

    async def put_many(self, events: list[NewEvent]) -> list[Accepted]:
        receipts = await self.sink.put_many(events)
        for event, accepted in zip(events, receipts, strict=True):
            self._remember(event, accepted)
        return receipts

    def clip(self, event_id: str) -> bytes | None:
        """One of the newest clips (MP4), by its event's id."""
        return next((mp4 for id_, mp4 in self.clips if id_ == event_id), None)

    def latest_clip_id(self) -> str | None:
        return self.clips[0][0] if self.clips else None

    def picture(self, event_id: str) -> bytes | None:
        for event in self.recent:
            if event.id == event_id:
                return event.picture
        return None
