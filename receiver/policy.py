"""The city's rules for what the receiver stores, applied to each valid event.

An event a rule refuses is answered as ``rejected`` with the rule's reason and
the pole dead-letters it: it would be refused again however often it was sent.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from sync.protocol import WireEvent


class PolicyConfig(BaseModel):
    """What the receiver refuses to store."""

    model_config = ConfigDict(extra="forbid")

    allowed_types: list[str] = Field(
        default_factory=list, description="Event types accepted; empty accepts every type."
    )
    forbid_plate_text: bool = Field(
        True,
        description="Refuse events that carry a plate in plain text (data.plate_text), "
        "whatever a pole's own policy says.",
    )
    max_future_s: float = Field(
        86_400.0,
        gt=0,
        description="Refuse events stamped further than this many seconds in the future (a broken clock).",
    )


def refusal(event: WireEvent, policy: PolicyConfig, now: float) -> str | None:
    """Why the policy refuses ``event``, or None if it may be stored."""
    if policy.allowed_types and event.type not in policy.allowed_types:
        return f"type: {event.type!r} is not accepted by this receiver's policy"
    if policy.forbid_plate_text and "plate_text" in event.data:
        return "data.plate_text: plain-text plates are forbidden by this receiver's policy"
    if event.ts > now + policy.max_future_s:
        return f"ts: {event.ts - now:.0f} s in the future; check the pole's clock"
    return None
