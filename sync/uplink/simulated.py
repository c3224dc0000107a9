"""An uplink that acknowledges every batch locally, as a perfect link would (bench work only)."""

from __future__ import annotations

import asyncio
import time

from sync.outbox import Outbox
from sync.uplink.base import UplinkConfig, UplinkState, wait_for_work


class SimulatedUplink:
    """Acknowledges every batch after ``delay_s``, as a perfect link would."""

    def __init__(self, outbox: Outbox, config: UplinkConfig, delay_s: float = 0.05) -> None:
        self.outbox = outbox
        self.config = config
        self.delay_s = delay_s
        self.state = UplinkState()
        self._wake = asyncio.Event()

    def sync_now(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            batch = await self.outbox.next_batch(self.config.max_batch_events, self.config.max_batch_bytes)
            if not batch:
                self.state.state = "idle"
                await wait_for_work(self.outbox, self._wake, self.config.heartbeat_s)
                continue
            self.state.state = "sending"
            await asyncio.sleep(self.delay_s)
            await self.outbox.ack([r.id for r in batch])
            self.state.count("ok")
            self.state.events_sent += len(batch)
            self.state.last_success = time.time()
