"""Another process holding SQLite's write lock past the busy timeout: writes wait with backoff and
then succeed, instead of failing with "database is locked"."""
from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

from .conftest import new_job


async def test_a_write_lock_held_past_the_busy_timeout_is_waited_out(make_sqlite_queue, data_dir, limits):
    q = await make_sqlite_queue(busy_timeout_s=0.1)
    held = threading.Event()

    def hold_lock() -> None:  # like a backup or a second `svibot jobs` holding the lock for 1 s
        conn = sqlite3.connect(data_dir.db_path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(1.0)
        conn.execute("COMMIT")
        conn.close()

    t = threading.Thread(target=hold_lock)
    t.start()
    held.wait()
    t0 = time.monotonic()
    job = await q.enqueue(new_job(), limits)  # 10x the busy timeout later, it lands
    waited = time.monotonic() - t0
    t.join()
    assert waited >= 0.8 and (await q.get_job(job.id)).state == "queued"
    await asyncio.sleep(0)
