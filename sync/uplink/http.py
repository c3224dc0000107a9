"""Wire protocol v1 over HTTP: ``POST /v1/batches`` and ``PUT /v1/media/{sha256}`` with the pole's token."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import aiohttp

from sync.protocol import BATCHES_PATH, MEDIA_PATH, media_type
from sync.uplink.transport import Answer, TransportError


class HttpTransport:
    """One keep-alive session to a receiver; ``base_url`` is e.g. ``https://receiver.city``."""

    def __init__(self, base_url: str, token: str | None, timeout_s: float) -> None:
        self._base = base_url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        headers = {"User-Agent": "smartpole-uplink/1"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        self._session = aiohttp.ClientSession(headers=headers, timeout=self._timeout)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send_batch(self, batch_id: str, body: bytes) -> Answer:
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        return await self._request("POST", BATCHES_PATH, body, headers)

    async def send_media(self, sha256: str, data: bytes) -> Answer:
        path = MEDIA_PATH.format(sha256=sha256)
        return await self._request("PUT", path, data, {"Content-Type": media_type(data)})

    async def _request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Answer:
        assert self._session is not None, "use the transport inside 'async with'"
        try:
            async with self._session.request(method, self._base + path, data=body, headers=headers) as resp:
                return Answer(resp.status, await resp.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
