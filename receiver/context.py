"""What every resource handler of the receiver shares: its settings, policy, store and metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from httpkit.body import Gunzip
from receiver.auth import TokenUse
from receiver.config import ReceiverSection
from receiver.metrics import ReceiverMetrics
from receiver.policy import PolicyConfig, ReceiverPolicy
from receiver.store.base import Store


@dataclass(frozen=True, slots=True)
class Context:
    config: ReceiverSection
    policy: PolicyConfig
    store: Store
    metrics: ReceiverMetrics
    gunzip: Gunzip
    token_use: TokenUse
    rules: ReceiverPolicy  # ``policy``, ready to apply

    @property
    def media_dir(self) -> Path:
        return Path(self.config.media_dir)
