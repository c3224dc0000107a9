"""What every resource handler of the receiver shares: its settings, policy, stores and metrics."""

from __future__ import annotations

from dataclasses import dataclass

from httpkit.body import Gunzip
from receiver.auth import TokenCache, TokenUse
from receiver.config import ReceiverSection
from receiver.mediastore.base import MediaStore
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
    media: MediaStore
    pole_tokens: TokenCache  # for the ingest routes (batches, media), where a pole asks again and again
