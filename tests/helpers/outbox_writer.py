"""Child process for the kill -9 test: puts events forever, printing each receipt after put returns."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from sync.events import NewEvent, Priority
from sync.outbox import Outbox, OutboxConfig


async def main(path: Path, producers: int) -> None:
    box = await Outbox.open(path, OutboxConfig(durability="full"))
    out = sys.stdout

    async def producer(k: int) -> None:
        i = 0
        while True:
            media = (f"jpeg-{k}-{i}".encode() * 50,) if i % 17 == 0 else ()
            got = await box.put(NewEvent("kill-test", {"k": k, "i": i}, Priority(i % 4), media=media))
            out.write(f"{got.id} {got.seq}\n")
            out.flush()
            i += 1

    print("ready", flush=True)
    await asyncio.gather(*(producer(k) for k in range(producers)))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
