"""Claims per second on the PostgreSQL queue with competing claimers, and the outbox's delivery
latency (a worker writes an event; how long until a bot process sees it), with and without
LISTEN/NOTIFY. Bounded: a fixed number of jobs and events, a deadline on every phase.

    python bench/queue_claims.py                      # starts a throwaway server (initdb/pg_ctl)
    python bench/queue_claims.py --database-url postgresql://...   # an EMPTY database you own
    python bench/queue_claims.py --jobs 40 --claimers 2 --events 5  # a quick check

Writes bench/results/queue_claims.json unless --no-save.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage import DataDir, JobQueue, Limits, NewJob, QueueConfig, WorkerId  # noqa: E402
from storage.dburl import redact  # noqa: E402

PHASE_DEADLINE_S = 120.0


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(buf, "PNG")
    return buf.getvalue()


def _config(url: str, root: Path) -> QueueConfig:
    return QueueConfig(db_path=DataDir(root).db_path, database_url=url, lease_seconds=600)


def _claimer(url: str, root: str, index: int, start_at: float, out: mp.Queue) -> None:
    async def run() -> list[int]:
        q = await JobQueue.open(_config(url, Path(root)), Path(root) / "photos", listen=False)
        me = WorkerId(owner=f"bench:{index}", host="bench", pid=index)
        got = []
        while time.time() < start_at:  # start together
            await asyncio.sleep(0.005)
        deadline = time.monotonic() + PHASE_DEADLINE_S
        while time.monotonic() < deadline and (job := await q.claim(me)) is not None:
            got.append(job.id)
        await q.close()
        return got

    got = asyncio.run(run())
    out.put((index, time.time(), got))


async def claims(url: str, root: Path, jobs: int, claimers: int) -> dict:
    q = await JobQueue.open(_config(url, root), root / "photos", listen=False)
    photo = _png()
    ids = [(await q.enqueue(NewJob("cli", "c", "u", photo, ["p"], {}), Limits())).id for _ in range(jobs)]
    await q.close()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 3.0  # every process has connected by then
    procs = [ctx.Process(target=_claimer, args=(url, str(root / f"c{i}"), i, start_at, out)) for i in range(claimers)]
    for p in procs:
        p.start()
    results = [out.get(timeout=PHASE_DEADLINE_S + 30) for _ in procs]
    for p in procs:
        p.join(30)
    claimed = [j for _, _, got in results for j in got]
    wall = max(t for _, t, _ in results) - start_at
    if sorted(claimed) != sorted(ids):
        raise SystemExit(f"claims were lost or doubled: {len(claimed)} claims of {len(ids)} jobs, "
                         f"{len(set(claimed))} distinct")
    return {"jobs": jobs, "claimers": claimers, "seconds": round(wall, 3),
            "claims_per_s": round(jobs / wall, 1),
            "per_claimer": sorted(len(got) for _, _, got in results)}


async def latency(url: str, root: Path, events: int, listen: bool, poll_s: float) -> dict:
    """A worker connection records progress events at random moments while a bot connection waits
    on its watch (LISTEN) or polls; each delay is from the write to the bot reading the event."""
    import random

    bot = await JobQueue.open(_config(url, root / "bot"), root / "bot" / "photos", listen=listen)
    gpu = await JobQueue.open(_config(url, root / "gpu"), root / "gpu" / "photos", listen=False)
    try:
        if listen:
            await asyncio.wait_for(bot._db.listening.wait(), 10)
        job = await bot.enqueue(NewJob("telegram", "c", "u", _png(), ["p"], {}), Limits())
        me = WorkerId(owner="bench:gpu", host="gpu", pid=1)
        await gpu.claim(me)
        for e in await bot.pending_events("telegram"):
            await bot.mark_delivered(e.id)
        news = bot.watch("events")
        delays: list[float] = []

        async def produce() -> None:
            rng = random.Random(0)
            for i in range(events):
                await asyncio.sleep(rng.uniform(0.05, 0.3))
                await gpu.record_progress(job.id, me, {"step": i, "sent": time.time()})

        async def consume() -> None:
            while len(delays) < events:
                rows = await bot.pending_events("telegram")
                now = time.time()
                for e in rows:
                    if "sent" in e.payload:
                        delays.append(now - e.payload["sent"])
                    await bot.mark_delivered(e.id)
                if not rows:
                    await news.wait(poll_s)

        await asyncio.wait_for(asyncio.gather(produce(), consume()), PHASE_DEADLINE_S)
        delays.sort()
        return {"events": events, "listen": listen, "poll_s": poll_s,
                "p50_ms": round(statistics.median(delays) * 1000, 1),
                "p95_ms": round(delays[max(0, round(len(delays) * 0.95) - 1)] * 1000, 1)}
    finally:
        await bot.close()
        await gpu.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", help="an empty PostgreSQL database; default: start a throwaway server")
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--claimers", type=int, default=8)
    ap.add_argument("--events", type=int, default=40)
    ap.add_argument("--poll", type=float, default=1.0, help="the polling interval without LISTEN")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()

    server = None
    url = args.database_url
    if url is None:
        from tests.support.postgres import PgServer, find_bindir

        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("no PostgreSQL binaries found; install postgresql or pass --database-url")
        server = PgServer(bindir).start()
        url = server.url()
    try:
        with tempfile.TemporaryDirectory(prefix="svibot-bench-") as tmp:
            root = Path(tmp)
            result = {
                "database": redact(url) if server is None else "throwaway local server",
                "claims": asyncio.run(claims(url, root / "claims", args.jobs, args.claimers)),
                "outbox_notify": asyncio.run(latency(url, root / "n", args.events, True, 5.0)),
                "outbox_polling": asyncio.run(latency(url, root / "p", args.events, False, args.poll)),
            }
    finally:
        if server is not None:
            server.stop()
    print(json.dumps(result, indent=2))
    if not args.no_save:
        out = ROOT / "bench" / "results" / "queue_claims.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
