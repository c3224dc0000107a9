"""Remote configuration on the pole: the overlay kept under the state directory, the effective
configuration the daemon runs, and the component that fetches a new overlay.

The pole's own file stays the base; the overlay the receiver sent wins over it
(:mod:`gateway.remote_config`). Every receiver reply names the pole's target
version; when it is not the version the pole runs, :class:`RemoteConfigFetcher`
fetches ``GET /v1/poles/{id}/config`` over HTTP with the pole's token (from
``uplink.url``, or ``uplink.config_url`` / ``uplink.mqtt.media_url`` for the MQTT
uplink), checks that the overlay is what its version names, validates it again
with the pole's models (an overlay that is valid at the receiver may still not
fit this pole: a camera it lacks, a hash rule without the plate secret), writes it
atomically (``0600``) to ``$STATE_DIRECTORY/remote-config.json`` and has the daemon
restart its components in-process with it, as SIGHUP does. An overlay that does
not validate changes nothing: the pole keeps running what it ran and reports the
error in its status block, and does not fetch that version again. At start the
persisted overlay is applied before anything contacts the receiver, so a reboot
keeps it; should it no longer fit the file, the file alone runs and the status
block says why.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import structlog

from gateway.config import PoleConfig
from gateway.configfile import ConfigError, read_toml, validate
from gateway.remote_config import (
    EMPTY_VERSION,
    FILE_NAME,
    OverlayError,
    effective_config,
    overlay_version,
    validate_overlay,
)
from sync.files import write_atomically
from sync.uplink.base import UplinkConfig

log = structlog.get_logger("remote_config")

CONFIG_PATH = "/v1/poles/{pole_id}/config"
RETRY_MAX_S = 60.0


@dataclass(frozen=True)
class LoadedConfig:
    """What the daemon runs: ``config`` is the base (``base``, the file's document) with ``overlay``
    (version ``version``) applied; ``error`` says why a persisted overlay is not applied."""

    config: PoleConfig
    base: dict[str, Any]
    source: Path | None
    overlay: dict[str, Any] = field(default_factory=dict)
    version: str = EMPTY_VERSION
    error: str | None = None

    @property
    def overlay_path(self) -> Path:
        return overlay_file(self.config)


def overlay_file(config: PoleConfig) -> Path:
    """``remote-config.json`` in the state directory ($STATE_DIRECTORY, else paths.state_dir)."""
    return config.paths.state() / FILE_NAME


def read_overlay(path: Path) -> tuple[dict[str, Any], str] | None:
    """The persisted (overlay, version), None if there is none; ``ValueError`` if it is unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    doc = orjson.loads(raw)
    if not isinstance(doc, dict) or not isinstance(doc.get("overlay"), dict) or not isinstance(doc.get("version"), str):
        raise ValueError("not a remote configuration file (an object with 'version' and 'overlay')")
    return doc["overlay"], doc["version"]


def write_overlay(path: Path, overlay: Mapping[str, Any], version: str) -> None:
    """Written atomically (a crash leaves the old file or the new one), ``0600``."""
    write_atomically(
        path, orjson.dumps({"version": version, "overlay": overlay}, option=orjson.OPT_INDENT_2), ".remote-config-"
    )


def _problems(exc: ConfigError | OverlayError) -> str:
    return "; ".join(exc.problems)


def apply_persisted(base: dict[str, Any], config: PoleConfig, source: Path | None) -> LoadedConfig:
    """``config`` (the base ``base`` validated) with the overlay persisted in its state directory."""
    path = overlay_file(config)
    try:
        stored = read_overlay(path)
    except (OSError, ValueError) as exc:
        return LoadedConfig(config, base, source, error=f"{path}: unreadable, not applied: {exc}")
    if stored is None:
        return LoadedConfig(config, base, source)
    overlay, version = stored
    try:
        overlay = validate_overlay(overlay)
        effective = effective_config(base, overlay, Path(f"remote config {version}"))
    except (OverlayError, ConfigError) as exc:
        error = f"remote config {version} not applied: {_problems(exc)}"
        log.error("remote_config_not_applied", version=version, error=error)
        return LoadedConfig(config, base, source, error=error)
    return LoadedConfig(effective, base, source, overlay, version)


def load_effective(path: Path, env: Mapping[str, str] | None = None) -> LoadedConfig:
    """The pole's file (:class:`ConfigError` if it is not valid by itself) with its persisted overlay."""
    doc, _ = read_toml(path)
    config = validate(PoleConfig, copy.deepcopy(doc), path, env)
    return apply_persisted(doc, config, path)


def embedded(config: PoleConfig, source: Path | None = None) -> LoadedConfig:
    """A configuration built in code (the demo, tests) as the base, with its persisted overlay."""
    return apply_persisted(config.model_dump(), config, source)


def reread(current: LoadedConfig) -> LoadedConfig:
    """Read the base again (the file, when there is one) and the persisted overlay."""
    if current.source is not None:
        return load_effective(current.source)
    base = validate(PoleConfig, copy.deepcopy(current.base), Path("(embedded)"))
    return apply_persisted(current.base, base, None)


class FetchError(Exception):
    pass


class RemoteConfigFetcher:
    """Fetches, checks and persists the overlay the receiver names; ``on_ready`` gets the new
    :class:`LoadedConfig` to restart with. A supervised component of the daemon."""

    def __init__(self, loaded: LoadedConfig, on_ready: Callable[[LoadedConfig], None]) -> None:
        self.loaded = loaded
        self.on_ready = on_ready
        uplink: UplinkConfig = loaded.config.uplink
        self.url = uplink.remote_config_url()
        self.token = uplink.token.get_secret_value() if uplink.token is not None else None
        self.timeout_s = uplink.timeout_s
        self.pole_id = loaded.config.pole.id
        self.target: str | None = None
        self.error: str | None = loaded.error
        self.failed: str | None = None  # a version that did not validate here: not fetched again
        self.pending: str | None = None  # a version persisted and handed over, the restart under way
        self._wake = asyncio.Event()

    @property
    def version(self) -> str:
        return self.loaded.version

    def heard(self, target: str) -> None:
        """A receiver reply named ``target`` as this pole's config version."""
        self.target = target
        if target == self.loaded.version:
            self.error = None  # whatever failed before, what runs is what the receiver wants
        if target not in (self.loaded.version, self.failed, self.pending):
            self._wake.set()

    async def run(self) -> None:
        delay = 1.0
        while True:
            await self._wake.wait()
            self._wake.clear()
            target = self.target
            if target is None or target in (self.loaded.version, self.failed, self.pending):
                continue
            try:
                await self.update(target)
                delay = 1.0
            except FetchError as exc:
                self.error = f"remote config {target} not fetched: {exc}"
                log.warning("remote_config_fetch_failed", target=target, error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                self._wake.set()

    async def update(self, target: str) -> None:
        """Fetch the overlay; persist it and hand it over if it validates, else record why not."""
        if self.url is None:
            self.failed = target
            self.error = (
                f"remote config {target} not fetched: no receiver URL to fetch it from "
                "(set uplink.config_url, or uplink.mqtt.media_url)"
            )
            log.error("remote_config_no_url", target=target)
            return
        version, fetched = await self.fetch()
        try:
            overlay = validate_overlay(fetched)
            if overlay_version(overlay) != version:
                raise OverlayError([f"(version): the overlay fetched is not version {version}"])
            config = effective_config(self.loaded.base, overlay, Path(f"remote config {version}"))
        except (OverlayError, ConfigError) as exc:
            self.failed = version
            self.error = f"remote config {version} not applied: {_problems(exc)}"
            log.error("remote_config_refused", version=version, error=self.error)
            return
        if version == self.loaded.version:
            return
        path = overlay_file(config)
        await asyncio.to_thread(write_overlay, path, overlay, version)
        log.info("remote_config_applying", version=version, previous=self.loaded.version, file=str(path))
        self.error = None
        self.pending = version
        self.on_ready(LoadedConfig(config, self.loaded.base, self.loaded.source, overlay, version))

    async def fetch(self) -> tuple[str, Any]:
        """(version, overlay) from the receiver; :class:`FetchError` for anything but a readable 200."""
        assert self.url is not None
        url = self.url.rstrip("/") + CONFIG_PATH.format(pole_id=self.pole_id)
        headers = {"User-Agent": "smartpole-remote-config/1"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as session,
                session.get(url, headers=headers) as resp,
            ):
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FetchError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        if status != 200:
            reason = doc.get("error") if isinstance(doc, dict) else None
            raise FetchError(f"receiver answered {status}: {reason or body[:200].decode('utf-8', 'replace')}")
        if not isinstance(doc, dict) or not isinstance(doc.get("version"), str) or "overlay" not in doc:
            raise FetchError("the receiver's answer has no 'version' and 'overlay'")
        return doc["version"], doc["overlay"]
