"""The sink the daemon hands to its producers: the outbox, plus a short memory of what went in.

The status page lists the newest events with their pictures, and Prometheus
counts events by type; both come from here rather than from the outbox, which
forgets an event as soon as the receiver has it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sync.events import Accepted, EventSink, NewEvent

RECENT_EVENTS = 25


@dataclass(frozen=True, slots=True)
class RecentEvent:
    id: str
    seq: int
    type: str
    priority: str
    ts: float
    data: dict[str, Any]
    picture: bytes | None  # the event's redacted JPEG, kept for the status page's thumbnail

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seq": self.seq,
            "type": self.type,
            "priority": self.priority,
            "ts": self.ts,
            "data": self.data,
            "thumb": self.picture is not None,
        }


class RecordingSink:
    """Puts into ``sink`` and remembers the last events that were accepted."""

    def __init__(self, sink: EventSink, on_event: Callable[[str], None] | None = None) -> None:
        self.sink = sink
        self.on_event = on_event
        self.recent: deque[RecentEvent] = deque(maxlen=RECENT_EVENTS)

    def _remember(self, event: NewEvent, accepted: Accepted) -> None:
        picture = event.media[0] if event.media else None
        self.recent.appendleft(
            RecentEvent(
                accepted.id, accepted.seq, event.type, event.priority.label, event.ts, dict(event.data), picture
            )
        )
        if self.on_event is not None:
            self.on_event(event.type)

    async def put(self, event: NewEvent) -> Accepted:
        accepted = await self.sink.put(event)
        self._remember(event, accepted)
        return accepted

    async def put_many(self, events: list[NewEvent]) -> list[Accepted]:
        receipts = await self.sink.put_many(events)
        for event, accepted in zip(events, receipts, strict=True):
            self._remember(event, accepted)
        return receipts

    def picture(self, event_id: str) -> bytes | None:
        for event in self.recent:
            if event.id == event_id:
                return event.picture
        return None
