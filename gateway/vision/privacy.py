"""What an event may say about a licence plate.

``drop`` (the default) records that a plate was read and nothing of its text;
``hash`` records an HMAC-SHA256 of the normalised text under a deployment secret,
so the same vehicle can be matched across poles without the plate being stored;
``keep`` records the text (only where the city's policy allows it).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

_NOT_PLATE_CHARS = re.compile(r"[^A-Z0-9]")


def normalise_plate(text: str) -> str:
    """Upper-case A-Z and 0-9 only: ``"eby-584"`` becomes ``"EBY584"``."""
    return _NOT_PLATE_CHARS.sub("", text.upper())


class PlatePolicy(BaseModel):
    """Plate text policy."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["drop", "hash", "keep"] = Field(
        "drop", description="'drop' keeps no text, 'hash' keeps an HMAC-SHA256 of it, 'keep' keeps the text."
    )
    secret: SecretStr | None = Field(
        None,
        description="Deployment-wide HMAC key for mode 'hash' (the same on every pole); "
        "set it with SMARTPOLE_PRIVACY_PLATES_SECRET rather than in the file.",
    )

    @model_validator(mode="after")
    def _hash_needs_secret(self) -> PlatePolicy:
        if self.mode == "hash" and (self.secret is None or len(self.secret.get_secret_value()) < 16):
            raise ValueError("mode 'hash' needs a secret of at least 16 characters")
        return self

    def fields(self, text: str) -> dict[str, Any]:
        """The plate part of an event's data for a read plate."""
        plate = normalise_plate(text)
        if self.mode == "keep":
            return {"plate_policy": "keep", "plate_text": plate}
        if self.mode == "hash":
            assert self.secret is not None
            digest = hmac.new(self.secret.get_secret_value().encode(), plate.encode(), hashlib.sha256).hexdigest()
            return {"plate_policy": "hash", "plate_hmac": digest}
        return {"plate_policy": "drop"}
