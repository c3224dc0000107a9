"""Choosing the uplink for a pole's configuration."""

from __future__ import annotations

from sync.outbox import Outbox
from sync.uplink.base import Uplink, UplinkConfig
from sync.uplink.http import HttpTransport
from sync.uplink.mqtt import MqttTransport
from sync.uplink.sender import BatchUplink, StatusProvider
from sync.uplink.simulated import SimulatedUplink


def build_uplink(outbox: Outbox, config: UplinkConfig, pole_id: str, status: StatusProvider) -> Uplink:
    """The uplink ``config.kind`` names, not yet running."""
    if config.kind == "simulated":
        return SimulatedUplink(outbox, config)
    if config.kind == "mqtt":
        return BatchUplink(outbox, config, pole_id, status, MqttTransport(config, pole_id))
    token = config.token.get_secret_value() if config.token is not None else None
    return BatchUplink(outbox, config, pole_id, status, HttpTransport(config.url, token, config.timeout_s))
