"""Outbox throughput and put latency against a raw sqlite3 ceiling; or, with ``--wear``, bytes written per event.

Usage: python bench/outbox.py [--mode full|normal] [--producers 64] [--events 200000]
       python bench/outbox.py --wear [--mode full|normal] [--seconds 30] [--rate 20] [--media-every 20]

Runs on uvloop, the event loop the daemon uses. Concurrent producers each
await single ``put`` calls (the pipeline's pattern);
then ``put_many`` in chunks; then plain ``sqlite3.executemany`` of the same rows
in transactions of 1000 into the same schema and pragmas, as the ceiling.

``--wear`` runs a pole instead: ``--rate`` events a second, each put by its own
task at its moment (so puts that fall in one commit window may share it), one
in ``--media-every`` carrying a 50 KB JPEG-like blob (0: none), and a simulated
uplink that every second reads what is committed, fetches its media and
acknowledges it. ``bytes_written_per_event`` is this process's
``write_bytes - cancelled_write_bytes`` from ``/proc/self/io`` from just after
the outbox is opened until it is closed (so the final checkpoint of the WAL into
the database is paid for), divided by the events put. The kernel counts a 4 KiB
page-cache page each time a clean page is dirtied, which is what later goes to
the block device; file-system metadata (the ext4 journal) is written by kernel
threads and is not in it. On tmpfs or overlay file systems it reads 0: ``--dir``
must then name a directory on a real disk (the default is the current directory).
``payload_bytes_per_event`` is the events' wire JSON plus their media, and
``outbox_written_bytes_per_event`` the outbox's own count (``Outbox.written_bytes``)
over the same span, which should agree.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sync.events import NewEvent, Priority  # noqa: E402
from sync.outbox import _INSERT_EVENT, _SCHEMA, PAGE_SIZE, Outbox, OutboxConfig  # noqa: E402


def sample_event(i: int) -> NewEvent:
    return NewEvent(
        type="presence",
        priority=Priority.EVENT if i % 4 else Priority.TELEMETRY,
        data={"zone": "crossing-north", "people": i % 7, "vehicles": {"car": i % 3, "bus": 0}, "track_ids": [i, i + 1]},
    )


async def run_puts(path: Path, mode: str, producers: int, events: int) -> tuple[float, list[float]]:
    outbox = await Outbox.open(path, OutboxConfig(durability=mode, max_bytes=10**11))
    per = events // producers
    latencies: list[float] = []

    async def producer(k: int) -> None:
        clock = time.perf_counter
        for i in range(per):
            ev = sample_event(k * per + i)
            t0 = clock()
            await outbox.put(ev)
            latencies.append(clock() - t0)

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for k in range(producers):
            tg.create_task(producer(k))
    elapsed = time.perf_counter() - t0
    await outbox.close()
    return per * producers / elapsed, latencies


async def run_put_many(path: Path, mode: str, events: int, chunk: int) -> float:
    outbox = await Outbox.open(path, OutboxConfig(durability=mode, max_bytes=10**11))
    batch = [sample_event(i) for i in range(chunk)]
    t0 = time.perf_counter()
    for _ in range(events // chunk):
        await outbox.put_many(batch)
    elapsed = time.perf_counter() - t0
    await outbox.close()
    return (events // chunk) * chunk / elapsed


def io_written() -> int:
    """Bytes this process has sent (or will send) to the block layer, less those cancelled by truncation."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["write_bytes"]) - int(fields["cancelled_write_bytes"])


def jpeg_like(i: int, size: int = 50_000) -> bytes:
    """Incompressible bytes framed like a JPEG, different for every ``i`` (no sharing by sha256)."""
    return b"\xff\xd8" + i.to_bytes(8, "big") + os.urandom(size - 12) + b"\xff\xd9"


async def run_wear(path: Path, mode: str, seconds: float, rate: float, media_every: int) -> dict[str, object]:
    outbox = await Outbox.open(path, OutboxConfig(durability=mode))
    written0 = io_written()
    counted0 = outbox.written_bytes
    payload = 0
    acked = 0
    puts: set[asyncio.Task[object]] = set()

    async def uplink() -> None:
        nonlocal payload, acked
        tick = loop.time()
        while True:
            tick += 1.0  # on the second, however long the last acknowledgement took to commit
            await asyncio.sleep(max(0.0, tick - loop.time()))
            batch = await outbox.next_batch(1000, 1_000_000)
            for record in batch:
                payload += len(record.body)
                for sha in record.media:
                    blob = await outbox.media(sha)
                    payload += len(blob or b"")
            acked += await outbox.ack([r.id for r in batch])

    loop = asyncio.get_running_loop()
    sender = asyncio.create_task(uplink())
    start = loop.time()
    n = int(seconds * rate)
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        ev = sample_event(i)
        if media_every and i % media_every == 0:
            ev = NewEvent(type="snapshot", data=ev.data, priority=Priority.MEDIA, media=(jpeg_like(i),))
        task = asyncio.create_task(outbox.put(ev))
        puts.add(task)
        task.add_done_callback(puts.discard)
    await asyncio.gather(*puts)
    while acked < n:  # let the uplink take the last events, as it would on a pole
        await asyncio.sleep(0.1)
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    commits = outbox.commits
    await outbox.close()
    written = io_written() - written0
    counted = outbox.written_bytes
    if written <= 0:
        raise SystemExit(f"/proc/self/io counted no writes under {path.parent}: use --dir on a real disk")
    return {
        "bench": "outbox-wear",
        "mode": mode,
        "seconds": seconds,
        "rate": rate,
        "events": n,
        "media_every": media_every,
        "commits": commits,
        "bytes_written": written,
        "bytes_written_per_event": round(written / n),
        "payload_bytes_per_event": round(payload / n),
        "ratio": round(written / payload, 2),
        # The outbox's own count over the same span, for comparison: it should agree.
        "outbox_written_bytes_per_event": None
        if counted is None or counted0 is None
        else round((counted - counted0) / n),
    }


def run_raw(path: Path, mode: str, events: int) -> float:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute(f"PRAGMA page_size={PAGE_SIZE}")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={'FULL' if mode == 'full' else 'NORMAL'}")
    con.executescript(_SCHEMA)
    body = json.dumps({"id": "0190c0de-0000-7000-8000-000000000000", "seq": 0, "data": sample_event(1).data})
    rows = [(1 << 56 | i, time.time(), len(body), body, None) for i in range(1, events + 1)]
    t0 = time.perf_counter()
    for i in range(0, events, 1000):
        con.execute("BEGIN")
        con.executemany(_INSERT_EVENT, rows[i : i + 1000])
        con.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    con.close()
    return events / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["full", "normal"], default="full")
    ap.add_argument("--producers", type=int, default=64)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--chunk", type=int, default=1000, help="events per put_many call")
    ap.add_argument("--rounds", type=int, default=3, help="repeat the put phase; the median round is reported")
    ap.add_argument("--wear", action="store_true", help="measure bytes written per event at a pole's rate instead")
    ap.add_argument("--seconds", type=float, default=30.0, help="wear: how long events are put")
    ap.add_argument("--rate", type=float, default=20.0, help="wear: events a second")
    ap.add_argument("--media-every", type=int, default=0, help="wear: one event in N carries a 50 KB JPEG (0: none)")
    ap.add_argument("--dir", type=Path, default=Path.cwd(), help="where the outbox files go: a real disk, not tmpfs")
    args = ap.parse_args()
    if args.wear:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            wear = uvloop.run(run_wear(Path(tmp) / "wear.db", args.mode, args.seconds, args.rate, args.media_every))
        print(json.dumps(wear))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        d = Path(tmp)
        # A shared 2-core machine varies by 20% from run to run: report the median round and the spread.
        rounds = sorted(
            (
                uvloop.run(run_puts(d / f"puts{i}.db", args.mode, args.producers, args.events))
                for i in range(args.rounds)
            ),
            key=lambda r: r[0],
        )
        rate, lat = rounds[len(rounds) // 2]
        many_rate = uvloop.run(run_put_many(d / "many.db", args.mode, args.events, args.chunk))
        raw_rate = run_raw(d / "raw.db", args.mode, args.events)
    lat.sort()
    result = {
        "bench": "outbox",
        "mode": args.mode,
        "loop": "uvloop",
        "producers": args.producers,
        "events": len(lat),
        "events_per_s": round(rate),
        "events_per_s_rounds": [round(r) for r, _ in rounds],
        "put_p50_ms": round(statistics.median(lat) * 1000, 3),
        "put_p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 3),
        "put_max_ms": round(lat[-1] * 1000, 3),
        "put_many_chunk": args.chunk,
        "put_many_events_per_s": round(many_rate),
        "raw_rows_per_s": round(raw_rate),
        "ratio": round(rate / raw_rate, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
