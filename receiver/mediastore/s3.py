"""Media in S3-compatible object storage (AWS S3, MinIO, Ceph RGW...) through aiobotocore.

Keys are content-addressed (``media/ab/cd/<sha256>.jpg``), so every receiver replica writes and
reads the same objects with no coordination, and a repeated upload rewrites identical bytes.
Each upload carries its sha256 (``ChecksumSHA256``) for the store to verify the bytes it got.
Credentials come from ``[media.s3]`` or, when those are unset, from botocore's usual chain (the
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` variables, a profile, an instance role).
Reads are streamed through the receiver, or answered with a presigned URL (``serve = "redirect"``).
An unreachable or failing endpoint raises :class:`MediaUnavailable` (a 503 to the pole, which
keeps the file and sends it again).
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from receiver.mediastore.base import KINDS, MediaUnavailable, StoredMedia, object_key

_CHUNK = 256 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound"}


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING


class S3MediaStore:
    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        prefix: str = "media/",
        redirect: bool = False,
        presign_s: int = 300,
        timeout_s: float = 10.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.redirect = redirect
        self.presign_s = presign_s
        self._settings: dict[str, Any] = {
            "endpoint_url": endpoint_url,
            "region_name": region,
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
            "config": AioConfig(
                connect_timeout=timeout_s,
                read_timeout=timeout_s,
                retries={"total_max_attempts": 2, "mode": "standard"},
                signature_version="s3v4",
            ),
        }
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def _s3(self) -> Any:
        if self._client is None:
            session = get_session()
            self._client = await self._stack.enter_async_context(session.create_client("s3", **self._settings))
        return self._client

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def check(self) -> None:
        try:
            await (await self._s3()).head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise MediaUnavailable(f"bucket {self.bucket!r}: {exc}") from exc

    async def exists(self, sha256: str, kind: str) -> bool:
        try:
            await (await self._s3()).head_object(Bucket=self.bucket, Key=object_key(sha256, kind, self.prefix))
        except ClientError as exc:
            if _missing(exc):
                return False
            raise MediaUnavailable(f"object storage: {exc}") from exc
        except BotoCoreError as exc:
            raise MediaUnavailable(f"object storage: {exc}") from exc
        return True

    async def put(self, sha256: str, kind: str, data: bytes) -> None:
        try:
            await (await self._s3()).put_object(
                Bucket=self.bucket,
                Key=object_key(sha256, kind, self.prefix),
                Body=data,
                ContentType=kind,
                ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(),
            )
        except (BotoCoreError, ClientError) as exc:
            raise MediaUnavailable(f"object storage: {exc}") from exc

    async def get(self, sha256: str) -> StoredMedia | None:
        s3 = await self._s3()
        for kind in KINDS:
            key = object_key(sha256, kind, self.prefix)
            try:
                if self.redirect:
                    head = await s3.head_object(Bucket=self.bucket, Key=key)
                    url = await s3.generate_presigned_url(
                        "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.presign_s
                    )
                    return StoredMedia(kind, int(head["ContentLength"]), url=url)
                response = await s3.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _missing(exc):
                    continue
                raise MediaUnavailable(f"object storage: {exc}") from exc
            except BotoCoreError as exc:
                raise MediaUnavailable(f"object storage: {exc}") from exc
            return StoredMedia(kind, int(response["ContentLength"]), chunks=_stream(response["Body"]))
        return None

    async def delete(self, sha256: str) -> None:
        objects = [{"Key": object_key(sha256, kind, self.prefix)} for kind in KINDS]
        try:
            await (await self._s3()).delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
        except (BotoCoreError, ClientError) as exc:
            raise MediaUnavailable(f"object storage: {exc}") from exc


async def _stream(body: Any) -> AsyncIterator[bytes]:
    async with body as stream:
        while chunk := await stream.read(_CHUNK):
            yield chunk
