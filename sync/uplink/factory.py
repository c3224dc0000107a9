"""Choosing the uplink for a pole's configuration."""

from __future__ import annotations

from collections.abc import Callable

from sync.outbox import Outbox
from sync.uplink.base import Uplink, UplinkConfig
from sync.uplink.http import HttpTransport
from sync.uplink.mqtt import MqttTransport
from sync.uplink.sender import BatchUplink, StatusProvider
from sync.uplink.simulated import SimulatedUplink


def build_uplink(
    outbox: Outbox,
    config: UplinkConfig,
    pole_id: str,
    status: StatusProvider,
    on_config_version: Callable[[str], None] | None = None,
) -> Uplink:
    """The uplink ``config.kind`` names, not yet running; ``on_config_version`` hears the target
    config version every receiver reply carries."""
    if config.kind == "simulated":
        return SimulatedUplink(outbox, config)
    if config.kind == "mqtt":
        transport = MqttTransport(config, pole_id)
        return BatchUplink(outbox, config, pole_id, status, transport, on_config_version)
    token = config.token.get_secret_value() if config.token is not None else None
    http = HttpTransport(config.url, token, config.timeout_s)
    return BatchUplink(outbox, config, pole_id, status, http, on_config_version)
