"""Keeping the daemon's components running: a crashed task is logged and restarted with backoff."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

log = structlog.get_logger("supervisor")


class FatalError(Exception):
    """An error no restart can fix (bad configuration found late, a lost disk): the daemon exits non-zero."""


@dataclass
class ComponentState:
    name: str
    running: bool = False
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None


class _RanLong(Exception):
    """A component crashed after a healthy run: restart it at once, with a fresh backoff."""


def _restartable(exc: BaseException) -> bool:
    # Cancellation (shutdown) and fatal errors must pass through, never be retried.
    return isinstance(exc, Exception) and not isinstance(exc, (FatalError, _RanLong))


class Supervisor:
    """Runs named components in one TaskGroup and restarts those that crash."""

    def __init__(
        self, backoff_initial_s: float = 1.0, backoff_max_s: float = 60.0, healthy_after_s: float = 60.0
    ) -> None:
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.healthy_after_s = healthy_after_s
        self.components: dict[str, ComponentState] = {}

    async def supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run()`` until it returns; restart it when it raises; let FatalError and cancellation through."""
        state = self.components.setdefault(name, ComponentState(name))
        while True:
            retrying = AsyncRetrying(
                retry=retry_if_exception(_restartable),
                wait=wait_exponential_jitter(multiplier=self.backoff_initial_s, max=self.backoff_max_s),
                before_sleep=lambda rs: self._crashed(state, rs),
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._run_once(state, run)
                return
            except _RanLong:
                continue

    async def _run_once(self, state: ComponentState, run: Callable[[], Awaitable[None]]) -> None:
        started = time.monotonic()
        state.running = True
        try:
            await run()
        except (FatalError, asyncio.CancelledError):
            raise
        except Exception as exc:
            if time.monotonic() - started >= self.healthy_after_s:
                self._record(state, exc)
                log.error("component_crashed", component=state.name, error=repr(exc), restart_in_s=0, exc_info=exc)
                raise _RanLong() from exc
            raise
        finally:
            state.running = False

    def _crashed(self, state: ComponentState, retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
        if exc is not None:
            self._record(state, exc)
        log.error(
            "component_crashed", component=state.name, error=repr(exc), restart_in_s=round(delay, 2), exc_info=exc
        )

    @staticmethod
    def _record(state: ComponentState, exc: BaseException) -> None:
        state.restarts += 1
        state.last_error = repr(exc)
        state.last_error_at = time.time()
