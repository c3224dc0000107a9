"""What producers hand to the outbox, and what the outbox hands back.

These types cross the boundary between the pipeline, the sensor readers, the
local ingest API and the outbox, so they are plain frozen dataclasses with no
knowledge of SQLite.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol


class Priority(enum.IntEnum):
    """Delivery and retention class of an event; a lower value is more important.

    Sync sends the most important first; under disk pressure the least
    important is evicted first (media before telemetry before events before alerts).
    """

    ALERT = 0
    EVENT = 1
    TELEMETRY = 2
    MEDIA = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | int | Priority) -> Priority:
        """Accept the wire name (``"alert"``), the enum or its integer."""
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                raise ValueError(
                    f"unknown priority {value!r}; expected one of " + ", ".join(p.label for p in cls)
                ) from None
        return cls(value)


@dataclass(frozen=True, slots=True)
class Location:
    """Where the pole was when it observed the event (WGS84 degrees)."""

    lat: float
    lon: float
    source: str = "config"

    def as_dict(self) -> dict[str, Any]:
        return {"lat": self.lat, "lon": self.lon, "source": self.source}


@dataclass(slots=True)
class NewEvent:
    """An event not yet accepted. ``media`` holds already-redacted JPEG bytes.

    Not frozen: producers make one per observation, and a frozen dataclass's
    ``__init__`` costs twice as much on the hot path.
    """

    type: str
    data: Mapping[str, Any]
    priority: Priority = Priority.EVENT
    ts: float = field(default_factory=time.time)
    location: Location | None = None
    media: tuple[bytes, ...] = ()


class Accepted(NamedTuple):
    """Receipt for an event that is durably committed to the outbox.

    A NamedTuple rather than a frozen dataclass: one is made per event on the
    outbox's hot path, and this is several times cheaper to create.

    A sink that applies the event policy (``gateway.recorder.RecordingSink``) answers an
    event the policy does not let through with a receipt that has no id, seq 0 and the
    reason in ``withheld``: nothing was committed.
    """

    id: str
    seq: int
    withheld: str | None = None


def withheld(reason: str) -> Accepted:
    """The receipt of an event the policy kept from the outbox."""
    return Accepted("", 0, reason)


class EventSink(Protocol):
    """Where producers put events. The daemon wires it to the outbox."""

    async def put(self, event: NewEvent) -> Accepted: ...

    async def put_many(self, events: list[NewEvent]) -> list[Accepted]: ...
