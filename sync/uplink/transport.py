"""The one thing an uplink transport does: carry a batch or a media file to the receiver and bring
back its answer. HTTP does it with a request; MQTT with a publish and the receiver's reply."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self


@dataclass(frozen=True, slots=True)
class Answer:
    """The receiver's answer: an HTTP status (over MQTT, the one its reply carries) and the JSON body."""

    status: int
    payload: bytes


class TransportError(Exception):
    """The request may not have reached the receiver, or its answer did not reach us: send it again."""


class CredentialsRefused(TransportError):
    """The broker refused our user name and password: retry slowly, as after a 401."""


class Transport(Protocol):
    """Open with ``async with``; every call may run concurrently with the others."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def send_batch(self, batch_id: str, body: bytes) -> Answer:
        """Deliver a gzip-compressed batch document; raise :class:`TransportError` if no answer came."""
        ...

    async def send_media(self, sha256: str, data: bytes) -> Answer:
        """Deliver a redacted JPEG or clip the receiver lacks; raise :class:`TransportError` if no answer came."""
        ...
