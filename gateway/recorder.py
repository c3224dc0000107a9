"""The sink the daemon hands to its producers: the event policy, the outbox, and a short memory
of what went in.

Every producer's events pass here (pipeline, sensors, the local ingest API), so this is where
the pole's event policy (:mod:`sync.policy`, ``[policy]``) applies before anything is committed:
an event of a type it does not let through is withheld (its receipt says why, nothing is
committed), and the fields its rules name are dropped or hashed (with the plate secret) in a
copy of the event; the producer's own object is left as it was.

The status page lists the newest events with their pictures and plays the
newest clips, and Prometheus counts events by type; all come from here rather
than from the outbox, which forgets an event as soon as the receiver has it.
Watchers hear of every accepted event (the clip recorders take their triggers
from other producers' events this way).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.vision.mp4 import is_mp4
from sync.events import Accepted, EventSink, NewEvent, withheld
from sync.policy import PolicyEngine

log = structlog.get_logger("recorder")

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
    """Applies ``policy``, puts into ``sink`` and remembers the last events that were accepted."""

    def __init__(
        self, sink: EventSink, on_event: Callable[[str], None] | None = None, policy: PolicyEngine | None = None
    ) -> None:
        self.sink = sink
        self.on_event = on_event
        self.policy = policy
        self.recent: deque[RecentEvent] = deque(maxlen=RECENT_EVENTS)
        self.clips: deque[tuple[str, bytes]] = deque(maxlen=RECENT_CLIPS)
        self.watchers: list[Watcher] = []
        self.withheld: Counter[str] = Counter()  # events kept from the outbox by the policy, by type
        self.redacted = 0  # fields the policy dropped or hashed

    def _filter(self, event: NewEvent) -> NewEvent | Accepted:
        """The event as the policy lets it through, or the receipt of one it withholds."""
        if self.policy is None:
            return event
        decision = self.policy.decide(event.type, event.data)
        if decision.refusal is not None:
            if not self.withheld[event.type]:
                log.info("event_withheld_by_policy", type=event.type, reason=decision.refusal)
            self.withheld[event.type] += 1
            return withheld(decision.refusal)
        if decision.data is event.data:
            return event
        self.redacted += decision.redacted
        return dataclasses.replace(event, data=decision.data)

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
        passed = self._filter(event)
        if isinstance(passed, Accepted):
            return passed
        accepted = await self.sink.put(passed)
        self._remember(passed, accepted)
        return accepted

    async def put_many(self, events: list[NewEvent]) -> list[Accepted]:
        """Receipts in the order of ``events``; a withheld event's has no id (``withheld`` says why)."""
        filtered = [self._filter(e) for e in events]
        passing = [e for e in filtered if isinstance(e, NewEvent)]
        receipts = iter(await self.sink.put_many(passing) if passing else [])
        out = []
        for item in filtered:
            if isinstance(item, Accepted):
                out.append(item)
                continue
            accepted = next(receipts)
            self._remember(item, accepted)
            out.append(accepted)
        return out

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
