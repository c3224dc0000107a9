"""Limits on failed logins, per client address and for the whole server.

- **One attempt at a time per address**: a second attempt while one is being checked is refused,
  so parallel guesses from one address get no more than sequential ones.
- **Exponential back-off per address**: after ``free_failures`` failures in a row, the address
  waits ``base_delay_s``, then twice that after the next failure, and so on up to
  ``max_delay_s``. A success clears its record; a record is forgotten ``forget_after_s`` after
  its last failure.
- **A global budget**: at most ``global_failures`` failed logins in any ``window_s`` from all
  addresses together (attempts being checked count against it), against guessing from many
  addresses. While it is spent, every attempt
  is refused, the right password too: a distributed attack can lock technicians out for up to
  ``window_s``, which is the price of a bound on guesses.

A refusal comes with the seconds to wait, for a 429 with ``Retry-After``. Memory is bounded:
at most ``max_addresses`` records are kept, the oldest dropped first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Record:
    failures: int = 0
    blocked_until: float = 0.0
    last_failure: float = 0.0
    in_flight: bool = False


class LoginThrottle:
    def __init__(
        self,
        free_failures: int = 3,
        base_delay_s: float = 2.0,
        max_delay_s: float = 900.0,
        global_failures: int = 30,
        window_s: float = 60.0,
        forget_after_s: float = 3600.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.global_failures = global_failures
        self.window_s = window_s
        self.forget_after_s = forget_after_s
        self.max_addresses = max_addresses
        self.clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._recent: deque[float] = deque()  # times of failures within the window, all addresses
        self._in_flight = 0  # attempts being checked: each may be one more failure

    def begin(self, client: str) -> float | None:
        """Reserve an attempt for ``client``: None if it may go ahead (then call :meth:`end`),
        else how many seconds it should wait."""
        now = self.clock()
        while self._recent and self._recent[0] <= now - self.window_s:
            self._recent.popleft()
        record = self._records.get(client)
        if record is not None and record.last_failure and now - record.last_failure > self.forget_after_s:
            del self._records[client]
            record = None
        if record is not None:
            if record.in_flight:
                return 1.0
            if record.blocked_until > now:
                return record.blocked_until - now
        if len(self._recent) + self._in_flight >= self.global_failures:
            return self._recent[0] + self.window_s - now if self._recent else 1.0
        if record is None:
            record = self._records[client] = _Record()
            while len(self._records) > self.max_addresses:
                self._records.popitem(last=False)
        self._records.move_to_end(client)
        record.in_flight = True
        self._in_flight += 1
        return None

    def failed(self, client: str) -> None:
        now = self.clock()
        self._recent.append(now)
        record = self._records.setdefault(client, _Record())
        record.failures += 1
        record.last_failure = now
        beyond = record.failures - self.free_failures
        if beyond > 0:
            record.blocked_until = now + min(self.max_delay_s, self.base_delay_s * 2 ** min(beyond - 1, 30))

    def succeeded(self, client: str) -> None:
        self._records.pop(client, None)

    def end(self, client: str) -> None:
        """The attempt :meth:`begin` reserved is over (whatever its outcome)."""
        self._in_flight -= 1
        record = self._records.get(client)
        if record is not None:
            record.in_flight = False


def retry_after(seconds: float) -> str:
    """The value of a ``Retry-After`` header: whole seconds, at least one."""
    return str(max(1, math.ceil(seconds)))
