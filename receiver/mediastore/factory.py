"""Opening the media store ``[media]`` names."""

from __future__ import annotations

from pathlib import Path

from receiver.config import MediaSection
from receiver.mediastore.base import MediaStore
from receiver.mediastore.local import LocalMediaStore
from receiver.mediastore.s3 import S3MediaStore


def open_media_store(media: MediaSection, media_dir: Path) -> MediaStore:
    if media.store == "local":
        return LocalMediaStore(media_dir)
    s3 = media.s3
    return S3MediaStore(
        s3.bucket,
        endpoint_url=s3.endpoint_url,
        region=s3.region,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key.get_secret_value() if s3.secret_access_key else None,
        prefix=s3.prefix,
        redirect=s3.serve == "redirect",
        presign_s=s3.presign_s,
        timeout_s=s3.timeout_s,
    )
