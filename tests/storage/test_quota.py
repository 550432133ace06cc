"""Per-user limits are checked inside the insert's transaction, so simultaneous requests cannot race past them."""
from __future__ import annotations

import asyncio

import pytest

from storage import Quota
from storage.errors import DailyQuotaReached, TooManyActiveJobs
from tests.storage.conftest import new_job


async def test_eight_simultaneous_enqueues_on_two_connections_queue_exactly_one(make_queue, limits):
    # Two connections to one file, as two processes (or a bot and the CLI) would hold.
    first, second = await make_queue(), await make_queue()
    quota = Quota(max_active_jobs=1, max_per_day=20, since=0.0)
    results = await asyncio.gather(
        *[(first if i % 2 else second).enqueue(new_job([f"p{i}"], user="u1"), limits, quota) for i in range(8)],
        return_exceptions=True)
    queued = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, TooManyActiveJobs)]
    assert len(queued) == 1 and len(refused) == 7
    assert all(r.job_ids == [queued[0].id] and r.limit == 1 for r in refused)
    assert [j.id for j in await first.list_jobs()] == [queued[0].id]


async def test_the_daily_quota_counts_finished_jobs_too(make_queue, limits, clock):
    q = await make_queue()
    quota = Quota(max_active_jobs=5, max_per_day=2, since=clock.now - 10)
    for prompt in ("a", "b"):
        job = await q.enqueue(new_job([prompt]), limits, quota)
        await q.cancel(job.id)
    with pytest.raises(DailyQuotaReached) as err:
        await q.enqueue(new_job(["c"]), limits, quota)
    assert (err.value.count, err.value.limit) == (2, 2)
    # Yesterday's jobs do not count, other users are not limited, and no quota means no limit.
    assert await q.enqueue(new_job(["d"]), limits, Quota(5, 2, since=clock.now + 1))
    assert await q.enqueue(new_job(["e"], user="u2"), limits, quota)
    assert await q.enqueue(new_job(["f"]), limits)
    assert len(await q.list_jobs()) == 5


async def test_the_active_limit_counts_running_jobs_and_only_this_platform(make_queue, limits):
    from storage import WorkerId
    q = await make_queue()
    quota = Quota(max_active_jobs=1, max_per_day=20, since=0.0)
    await q.enqueue(new_job(["a"]), limits, quota)
    assert (await q.claim(WorkerId.current())).state == "running"
    with pytest.raises(TooManyActiveJobs):
        await q.enqueue(new_job(["b"]), limits, quota)
    other = await q.enqueue(new_job(["c"], platform="telegram"), limits, quota)  # same id, other platform
    assert other.platform == "telegram"
