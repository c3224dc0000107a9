"""Rate limiting for log lines that a misbehaving device would otherwise repeat without end."""

from __future__ import annotations

import time
from collections.abc import Callable


class LogThrottle:
    """Lets the first occurrence of each key through, then at most one per ``interval_s``.

    A sensor sending garbage produces an error per frame; one log line a minute
    with the number held back says the same without flooding the journal.
    """

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None to stay quiet; otherwise how many occurrences were held back since the last line."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)
