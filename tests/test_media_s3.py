"""Media in object storage, against ``moto`` in server mode on 127.0.0.1: content-addressed keys,
streamed and presigned reads, retention deletes, and an unreachable endpoint that loses nothing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiobotocore.session import get_session
from pydantic import SecretStr

from receiver.config import MediaSection, S3Section
from receiver.mediastore.base import MediaStore
from receiver.mediastore.factory import open_media_store
from sync.events import NewEvent, Priority
from sync.outbox import Outbox
from tests.conftest import RunningReceiver, start_receiver, stop_receiver
from tests.helpers.objectstore import ACCESS_KEY, REGION, SECRET_KEY, MotoServer, free_port
from tests.test_media_checks import real_clip, real_jpeg
from tests.test_uplink import drained, run_until, uplink_for

BUCKET = "smartpole-media-test"


def s3_section(endpoint: str, **overrides: object) -> MediaSection:
    settings: dict[str, object] = {
        "bucket": BUCKET,
        "endpoint_url": endpoint,
        "region": REGION,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SecretStr(SECRET_KEY),
        "timeout_s": 2.0,
    }
    settings.update(overrides)
    return MediaSection(store="s3", s3=S3Section(**settings))  # type: ignore[arg-type]


async def make_bucket(endpoint: str) -> None:
    session = get_session()
    async with session.create_client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY
    ) as s3:
        await s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})


async def object_keys(endpoint: str) -> list[str]:
    session = get_session()
    async with session.create_client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY
    ) as s3:
        listed = await s3.list_objects_v2(Bucket=BUCKET)
        return sorted(o["Key"] for o in listed.get("Contents", []))


@pytest.fixture
async def moto(tmp_path: Path) -> AsyncIterator[MotoServer]:
    server = await asyncio.to_thread(MotoServer(tmp_path / "moto.log").start)
    await make_bucket(server.url)
    yield server
    await asyncio.to_thread(server.stop)


async def s3_receiver(tmp_path: Path, media: MediaStore) -> RunningReceiver:
    rx = await start_receiver(f"sqlite:///{tmp_path / 'rx.db'}", tmp_path / "media", media=media)
    await rx.add_pole("pole-1")
    return rx


async def test_media_goes_to_content_addressed_keys_and_is_streamed_back(moto: MotoServer, tmp_path: Path) -> None:
    rx = await s3_receiver(tmp_path, open_media_store(s3_section(moto.url), tmp_path / "unused"))
    outbox = await Outbox.open(tmp_path / "outbox.db")
    try:
        jpeg, clip = real_jpeg(11), real_clip()
        await outbox.put(NewEvent("presence", {"people": 1}, Priority.MEDIA, media=(jpeg,)))
        await outbox.put(NewEvent("clip", {"seconds": 0.6}, Priority.MEDIA, media=(clip,)))
        await run_until(uplink_for(outbox, rx), drained(outbox))
        jpeg_sha, clip_sha = hashlib.sha256(jpeg).hexdigest(), hashlib.sha256(clip).hexdigest()
        assert await object_keys(moto.url) == sorted(
            [
                f"media/{jpeg_sha[:2]}/{jpeg_sha[2:4]}/{jpeg_sha}.jpg",
                f"media/{clip_sha[:2]}/{clip_sha[2:4]}/{clip_sha}.mp4",
            ]
        )
        assert not (tmp_path / "unused").exists(), "nothing written locally"
        reader = {"Authorization": f"Bearer {await rx.add_reader()}"}
        async with aiohttp.ClientSession() as s:
            for sha, body, kind in ((jpeg_sha, jpeg, "image/jpeg"), (clip_sha, clip, "video/mp4")):
                async with s.get(f"{rx.url}/v1/media/{sha}", headers=reader) as r:
                    assert r.status == 200
                    assert r.headers["Content-Type"] == kind
                    assert await r.read() == body
            async with s.get(f"{rx.url}/v1/media/{'0' * 64}", headers=reader) as r:
                assert r.status == 404
    finally:
        await outbox.close()
        await stop_receiver(rx)


async def test_redirect_mode_answers_with_a_presigned_url_that_works(moto: MotoServer, tmp_path: Path) -> None:
    rx = await s3_receiver(tmp_path, open_media_store(s3_section(moto.url, serve="redirect", presign_s=60), tmp_path))
    try:
        jpeg = real_jpeg(12)
        sha = hashlib.sha256(jpeg).hexdigest()
        pole = {"Authorization": f"Bearer {rx.tokens['pole-1']}", "Content-Type": "image/jpeg"}
        reader = {"Authorization": f"Bearer {await rx.add_reader()}"}
        async with aiohttp.ClientSession() as s:
            async with s.put(f"{rx.url}/v1/media/{sha}", data=jpeg, headers=pole) as r:
                assert r.status == 201, await r.text()
            async with s.get(f"{rx.url}/v1/media/{sha}", headers=reader, allow_redirects=False) as r:
                assert r.status == 302
                location = r.headers["Location"]
            assert location.startswith(moto.url) and "Signature=" in location
            async with s.get(location) as r:
                assert r.status == 200 and await r.read() == jpeg
    finally:
        await stop_receiver(rx)


async def test_a_body_that_does_not_match_its_hash_never_reaches_the_bucket(moto: MotoServer, tmp_path: Path) -> None:
    rx = await s3_receiver(tmp_path, open_media_store(s3_section(moto.url), tmp_path))
    try:
        jpeg = real_jpeg(13)
        wrong = hashlib.sha256(b"something else").hexdigest()
        pole = {"Authorization": f"Bearer {rx.tokens['pole-1']}", "Content-Type": "image/jpeg"}
        async with aiohttp.ClientSession() as s, s.put(f"{rx.url}/v1/media/{wrong}", data=jpeg, headers=pole) as r:
            assert r.status == 400
        assert await object_keys(moto.url) == []
    finally:
        await stop_receiver(rx)


async def test_retention_deletes_every_kind_under_a_hash(moto: MotoServer, tmp_path: Path) -> None:
    store = open_media_store(s3_section(moto.url), tmp_path)
    try:
        clip = real_clip()
        sha = hashlib.sha256(clip).hexdigest()
        await store.put(sha, "video/mp4", clip)
        assert await store.exists(sha, "video/mp4")
        await store.delete(sha)
        assert not await store.exists(sha, "video/mp4")
        assert await store.get(sha) is None
        await store.delete(sha)  # absent: fine
    finally:
        await store.close()


async def test_an_unreachable_endpoint_answers_503_and_the_pole_keeps_its_media(tmp_path: Path) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    rx = await s3_receiver(tmp_path, open_media_store(s3_section(endpoint, timeout_s=1.0), tmp_path))
    outbox = await Outbox.open(tmp_path / "outbox.db")
    server = MotoServer(tmp_path / "moto.log", port=port)
    try:
        jpeg = real_jpeg(14)
        sha = hashlib.sha256(jpeg).hexdigest()
        await outbox.put(NewEvent("presence", {"people": 3}, Priority.MEDIA, media=(jpeg,)))
        uplink = uplink_for(outbox, rx, timeout_s=15)
        task = asyncio.create_task(uplink.run())
        deadline = asyncio.get_running_loop().time() + 30
        while uplink.state.state != "backoff":
            assert asyncio.get_running_loop().time() < deadline, uplink.state
            await asyncio.sleep(0.05)
        assert "503" in (uplink.state.last_error or "")
        assert outbox.backlog == 1 and await outbox.media(sha) == jpeg, "the pole keeps event and JPEG"
        await asyncio.to_thread(server.start)
        await make_bucket(server.url)
        while outbox.backlog:
            assert asyncio.get_running_loop().time() < deadline + 30, uplink.state
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert await object_keys(server.url) == [f"media/{sha[:2]}/{sha[2:4]}/{sha}.jpg"]
        (event,) = await rx.all_events()
        assert event["media"] == [sha]
    finally:
        await asyncio.to_thread(server.stop)
        await outbox.close()
        await stop_receiver(rx)
