"""A token bucket in bytes per second, so a drained backlog cannot saturate a cellular link."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """``await take(n)`` waits until ``n`` bytes fit the rate; a rate of 0 means unlimited.

    A request larger than the burst is let through once the bucket is full and
    leaves it in debt, so large batches are paced rather than refused.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        async with self._lock:
            self._refill()
            needed = min(n, self.burst)
            if self._tokens < needed:
                await asyncio.sleep((needed - self._tokens) / self.rate)
                self._refill()
            self._tokens -= n
