"""Media must decode as a JPEG (not merely start with FF D8 FF), within a size a pole can make,
and is served with X-Content-Type-Options: nosniff, so no browser takes it for anything else."""

from __future__ import annotations

import hashlib
import struct

import aiohttp
import cv2
import numpy as np
import pytest

from tests.conftest import RunningReceiver


def real_jpeg(seed: int = 0, width: int = 64, height: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", pixels)
    assert ok
    return encoded.tobytes()


def claimed_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0) saying another size."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


NOT_JPEGS = {
    "magic and junk": b"\xff\xd8\xff\xe0" + b"<script>alert(1)</script>" * 40 + b"\xff\xd9",
    "html after the magic": b"\xff\xd8\xff<html><body>hi</body></html>",
    "cut in half": real_jpeg(1)[:400],
    "no end marker": real_jpeg(2)[:-2],
    "a picture of 60000 x 60000": claimed_size(real_jpeg(3), 60000, 60000),
}


@pytest.mark.parametrize("name", list(NOT_JPEGS))
async def test_what_does_not_decode_as_a_jpeg_is_refused(receiver: RunningReceiver, name: str) -> None:
    body = NOT_JPEGS[name]
    sha = hashlib.sha256(body).hexdigest()
    headers = {"Authorization": f"Bearer {receiver.tokens['pole-1']}", "Content-Type": "image/jpeg"}
    async with aiohttp.ClientSession() as s, s.put(f"{receiver.url}/v1/media/{sha}", data=body, headers=headers) as r:
        assert r.status == 415, await r.text()
        assert "JPEG" in (await r.json())["error"]
    assert not receiver.receiver.ctx.media.path(sha).exists()


async def test_a_jpeg_is_stored_and_served_with_nosniff(receiver: RunningReceiver) -> None:
    body = real_jpeg(4)
    sha = hashlib.sha256(body).hexdigest()
    headers = {"Authorization": f"Bearer {receiver.tokens['pole-1']}", "Content-Type": "image/jpeg"}
    reader = await receiver.add_reader()
    async with aiohttp.ClientSession() as s:
        async with s.put(f"{receiver.url}/v1/media/{sha}", data=body, headers=headers) as r:
            assert r.status == 201, await r.text()
        async with s.get(f"{receiver.url}/v1/media/{sha}", headers={"Authorization": f"Bearer {reader}"}) as r:
            assert r.status == 200 and await r.read() == body
            assert r.headers["Content-Type"] == "image/jpeg"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        async with s.get(f"{receiver.url}/v1/events", headers={"Authorization": f"Bearer {reader}"}) as r:
            assert r.headers["X-Content-Type-Options"] == "nosniff", "every answer says it"


def real_clip(frames: int = 6) -> bytes:
    """A small H.264 MP4 made the way the pole makes its clips (gateway.vision.mp4)."""
    from gateway.vision.mp4 import encode_mp4

    pixels = np.random.default_rng(7).integers(0, 255, (48 * 3 // 2, 64), dtype=np.uint8)
    return encode_mp4([pixels] * frames, [i / 10 for i in range(frames)], crf=30, preset="ultrafast")


NOT_CLIPS = {
    "ftyp and junk": b"\x00\x00\x00\x18ftypisom" + b"<script>alert(1)</script>" * 40,
    "cut in half": real_clip()[:300],
}


async def test_a_real_clip_is_stored_and_served_as_video_mp4(receiver: RunningReceiver) -> None:
    clip = real_clip()
    sha = hashlib.sha256(clip).hexdigest()
    put = {"Authorization": f"Bearer {receiver.tokens['pole-1']}", "Content-Type": "video/mp4"}
    reader = await receiver.add_reader()
    async with aiohttp.ClientSession() as s:
        async with s.put(f"{receiver.url}/v1/media/{sha}", data=clip, headers=put) as r:
            assert r.status == 201, await r.text()
        async with s.get(f"{receiver.url}/v1/media/{sha}", headers={"Authorization": f"Bearer {reader}"}) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "video/mp4"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert await r.read() == clip
    assert receiver.receiver.ctx.media.path(sha, "video/mp4").exists()


@pytest.mark.parametrize("name", list(NOT_CLIPS))
async def test_what_does_not_decode_as_an_h264_clip_is_refused(receiver: RunningReceiver, name: str) -> None:
    body = NOT_CLIPS[name]
    sha = hashlib.sha256(body).hexdigest()
    headers = {"Authorization": f"Bearer {receiver.tokens['pole-1']}", "Content-Type": "video/mp4"}
    async with aiohttp.ClientSession() as s, s.put(f"{receiver.url}/v1/media/{sha}", data=body, headers=headers) as r:
        assert r.status == 415, await r.text()
        assert "MP4" in (await r.json())["error"]
    assert not receiver.receiver.ctx.media.path(sha, "video/mp4").exists()


async def test_a_jpeg_declared_as_a_clip_is_refused(receiver: RunningReceiver) -> None:
    body = real_jpeg(9)
    sha = hashlib.sha256(body).hexdigest()
    headers = {"Authorization": f"Bearer {receiver.tokens['pole-1']}", "Content-Type": "video/mp4"}
    async with aiohttp.ClientSession() as s, s.put(f"{receiver.url}/v1/media/{sha}", data=body, headers=headers) as r:
        assert r.status == 415, await r.text()
