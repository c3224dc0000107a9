"""Sending the outbox upstream: the ``Uplink`` interface, the batch engine shared by every
transport, the HTTP and MQTT transports, and a simulated uplink for bench work."""
