"""TLS by default: the one rule for every URL a pole sends to (the receiver's, the MQTT broker's).

A URL without TLS is fine to this machine (loopback: a local receiver or broker, a TLS-terminating
proxy on the pole) and refused to any other host unless the configuration says
``allow_insecure = true``; then the daemon says so in its log and on the status page. Over a
plain connection anyone on the path reads the pole's bearer token and every event, and can
forge the receiver's replies.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine: 127.0.0.0/8, ::1 or localhost (by name, not by a lookup)."""
    host = host.strip("[]").lower().rstrip(".")
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_url_problem(
    url: str, secure: Collection[str] = ("https",), plain: Collection[str] = ("http",)
) -> str | None:
    """Why ``url`` may not be used without ``allow_insecure``, or None. ``secure`` and ``plain`` are
    the schemes with and without TLS (for a broker: ``("mqtts",)`` and ``("mqtt",)``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        return f"not a URL: {exc}"
    scheme = parts.scheme.lower()
    if scheme not in (*secure, *plain):
        return f"must start with {' or '.join(f'{s}://' for s in (*secure, *plain))}"
    if not host:
        return "names no host"
    if scheme in secure or is_loopback(host):
        return None
    return (
        f"{scheme}:// to {host} is without TLS: the token and every event would cross the network in clear; "
        f"use {next(iter(secure))}://, or set allow_insecure = true if that is really meant"
    )
