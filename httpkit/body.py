"""Request bodies read against a limit, whatever their framing, and gzip inflated the same way.

aiohttp checks ``client_max_size`` as it reads, but a handler that trusts ``Content-Length``
alone lets a chunked body through, and aiohttp's own gunzip inflates each network chunk whole
(a 1 MB gzip bomb becomes a gigabyte in a few reads). So servers here turn aiohttp's automatic
decompression off (``handler_args={"auto_decompress": False}``, see :data:`NO_AUTO_DECOMPRESS`)
and read bodies with :func:`read_body`; gzip goes through a :class:`Gunzip`, which inflates at
most ``step`` bytes at a time, stops as soon as the output passes its limit, runs in a thread
(the event loop keeps serving) and lets at most ``max_concurrent`` run at once. Memory for
bodies is then bounded by ``max_concurrent x max_decompressed_bytes`` for inflated data plus
one raw body (at most its limit) per request being read.
"""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web

NO_AUTO_DECOMPRESS = {"auto_decompress": False}
_READ_STEP = 64 * 1024


class BodyTooLarge(Exception):
    """The body (or what it inflates to) is beyond ``limit`` bytes: answer 413."""

    def __init__(self, limit: int, what: str = "request body") -> None:
        super().__init__(f"{what} larger than {limit} bytes")
        self.limit = limit


class BadEncoding(Exception):
    """The body does not decode as its Content-Encoding says (``status`` 400), or that encoding is
    not taken here (415)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def content_encoding(request: web.Request) -> str:
    return request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"


def require_identity(request: web.Request) -> None:
    """For bodies taken only as sent (no automatic decompression): anything else is a 415."""
    encoding = content_encoding(request)
    if encoding != "identity":
        raise BadEncoding(f"unsupported Content-Encoding {encoding!r}; send the body as is", 415)


async def read_body(request: web.Request, max_bytes: int) -> bytearray:
    """The raw body, refused as soon as it passes ``max_bytes``: by Content-Length before reading,
    else while reading (chunked transfer encoding says nothing of the size up front)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyTooLarge(max_bytes)
    body = bytearray()
    async for chunk in request.content.iter_chunked(_READ_STEP):
        body.extend(chunk)
        if len(body) > max_bytes:
            raise BodyTooLarge(max_bytes)
    return body


def gunzip_limited(data: bytes | bytearray, max_bytes: int, step: int = 1 << 20) -> bytearray:
    """Inflate one gzip member, at most ``step`` bytes of output at a time; :class:`BodyTooLarge`
    as soon as the output passes ``max_bytes``, :class:`BadEncoding` if it is not gzip or is cut short."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = bytearray()
    pos = 0
    try:
        while pos < len(data) and not inflater.eof:
            pending = bytes(data[pos : pos + _READ_STEP])  # small slices: unconsumed_tail copies stay small
            pos += len(pending)
            while pending and not inflater.eof:
                out += inflater.decompress(pending, step)
                if len(out) > max_bytes:
                    raise BodyTooLarge(max_bytes, "body once decompressed")
                pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise BadEncoding(f"not valid gzip: {exc}") from None
    if not inflater.eof:
        raise BadEncoding("gzip stream cut short")
    if inflater.unused_data or pos < len(data):
        raise BadEncoding("data after the end of the gzip stream")
    return out


class Gunzip:
    """Inflates bodies in threads, ``max_concurrent`` at a time (the others wait their turn).

    A small body (a pole's batch of tens of events) is inflated at once on the caller's thread, up
    to ``INLINE_OUTPUT`` bytes (well under a millisecond): handing it to a thread costs more than
    that. One that would inflate further goes to a thread like any other."""

    INLINE_INPUT = 16_384
    INLINE_OUTPUT = 1 << 20

    def __init__(self, max_concurrent: int = 2) -> None:
        self.max_concurrent = max_concurrent
        self._slots = asyncio.Semaphore(max_concurrent)

    async def __call__(self, data: bytes | bytearray, max_bytes: int) -> bytearray:
        if len(data) <= self.INLINE_INPUT:
            try:
                return gunzip_limited(data, min(max_bytes, self.INLINE_OUTPUT))
            except BodyTooLarge:
                if max_bytes <= self.INLINE_OUTPUT:
                    raise
        async with self._slots:
            return await asyncio.to_thread(gunzip_limited, data, max_bytes)


async def read_json_body(request: web.Request, max_bytes: int, max_decompressed: int, gunzip: Gunzip) -> bytearray:
    """A body sent as is or gzip-compressed, bounded on the wire and once inflated."""
    encoding = content_encoding(request)
    if encoding not in ("identity", "gzip"):
        raise BadEncoding(f"unsupported Content-Encoding {encoding!r}; send gzip or nothing", 415)
    body = await read_body(request, max_bytes)
    if encoding == "gzip":
        return await gunzip(body, max_decompressed)
    if len(body) > max_decompressed:
        raise BodyTooLarge(max_decompressed, "body once decompressed")
    return body
