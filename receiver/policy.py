"""The city's rules for what the receiver stores: the shared event policy (:mod:`sync.policy`)
plus what only a receiver can judge, applied to each valid event after the pole's own policy.

An event a rule refuses is answered as ``rejected`` with the rule's reason and
the pole dead-letters it: it would be refused again however often it was sent.
An event whose fields a ``redact`` rule drops or hashes is stored without them.
Hashes made here use the receiver's own secret (``[policy] secret``,
``SMARTPOLE_POLICY_SECRET``), not the poles' plate secret: the same value hashed at
a pole and at the receiver gives two different hashes.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson
from pydantic import Field, SecretStr, model_validator

from sync.policy import PLATE_TEXT_PATH, EventPolicy, PolicyEngine, compile_rule, find, is_hashed
from sync.protocol import WireEvent

_PLATE_TEXT = compile_rule(PLATE_TEXT_PATH)


class PolicyConfig(EventPolicy):
    """What the receiver refuses to store, and what of the rest it removes or hashes."""

    forbid_plate_text: bool = Field(
        True,
        description="Refuse events that carry a plate in plain text (a 'plate_text' field anywhere in the data "
        "that is not a hash), whatever a pole's own policy says.",
    )
    max_future_s: float = Field(
        86_400.0,
        gt=0,
        description="Refuse events stamped further than this many seconds in the future (a broken clock).",
    )
    secret: SecretStr | None = Field(
        None,
        description="HMAC key of 'hash' rules (16+ characters); SMARTPOLE_POLICY_SECRET overrides it. "
        "Hashes made here differ from those the poles make with their plate secret.",
    )

    @model_validator(mode="after")
    def _hash_needs_secret(self) -> PolicyConfig:
        if self.hashes() and (self.secret is None or len(self.secret.get_secret_value()) < 16):
            raise ValueError("a 'hash' rule needs policy.secret (SMARTPOLE_POLICY_SECRET), at least 16 characters")
        return self


class Verdict(NamedTuple):
    """``refusal``: why the event may not be stored (None: it may), ``kind`` the refusal's metric
    label (type, future, plate_text); ``event`` as it may be stored, ``redacted`` fields removed or hashed."""

    refusal: str | None
    kind: str | None
    event: WireEvent
    redacted: int = 0


class ReceiverPolicy:
    """:class:`PolicyConfig` ready to apply to each event of a batch."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        key = config.secret.get_secret_value().encode() if config.secret is not None else None
        self.engine = PolicyEngine(config, key, "this receiver")

    def apply(self, event: WireEvent, now: float) -> Verdict:
        """What this policy makes of ``event``."""
        config = self.config
        refusal = self.engine.refusal(event.type)
        if refusal is not None:
            return Verdict(refusal, "type", event)
        if event.ts > now + config.max_future_s:
            return Verdict(f"ts: {event.ts - now:.0f} s in the future; check the pole's clock", "future", event)
        raw = orjson.dumps(event.data)  # once, for every rule's quick check
        if config.forbid_plate_text and _plain_plate_text(event, raw):
            return Verdict(
                "data.plate_text: plain-text plates are forbidden by this receiver's policy", "plate_text", event
            )
        decision = self.engine.redact(event.type, event.data, raw)
        if decision.data is event.data:
            return Verdict(None, None, event)
        return Verdict(None, None, event.model_copy(update={"data": decision.data}), decision.redacted)


def _plain_plate_text(event: WireEvent, raw: bytes) -> bool:
    """True if a ``plate_text`` field anywhere in the data (``raw`` as JSON) holds something other than a hash."""
    if _PLATE_TEXT.needle is not None and _PLATE_TEXT.needle not in raw:
        return False
    return any(not is_hashed(value) for _, value in find(event.data, _PLATE_TEXT.steps))
