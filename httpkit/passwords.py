"""Password hashes for human logins (the pole's technicians, the receiver's dashboard).

scrypt (N=2**14, r=8, p=1: about 16 MB and 50-100 ms of CPU per check) is what makes a
stolen hash slow to crack, and also what makes each login attempt expensive. So a check
never runs on the event loop: :class:`PasswordChecker` runs it in a thread pool of its
own (hashlib releases the GIL) with at most ``max_concurrent`` at once, and a login
flood queues there instead of stalling every other request. Rate-limit attempts in
front of it (:mod:`httpkit.throttle`) so the queue stays short.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from concurrent.futures import ThreadPoolExecutor

SCHEME = "scrypt"
_N, _R, _P = 2**14, 8, 1
_MAX_N = 2**20  # a hash asking for more work than this is not one of ours: refuse rather than stall


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"{SCHEME}${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (blocking: tens of milliseconds of CPU)."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != SCHEME or not 1 < int(n) <= _MAX_N or not 0 < int(r) * int(p) <= 64:
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, TypeError, MemoryError):
        return False
    return hmac.compare_digest(got, expected)


def is_password_hash(encoded: str) -> bool:
    parts = encoded.split("$")
    return len(parts) == 6 and parts[0] == SCHEME


class PasswordChecker:
    """Checks passwords off the event loop, ``max_concurrent`` at a time."""

    def __init__(self, max_concurrent: int = 1) -> None:
        self.max_concurrent = max_concurrent
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="password-check")

    async def verify(self, password: str, encoded: str) -> bool:
        return await asyncio.get_running_loop().run_in_executor(self._pool, verify_password, password, encoded)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
