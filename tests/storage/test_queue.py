"""The queue's verbs and their guarantees: claiming, leases, cancel, persistence, outbox."""
from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
from pathlib import Path

import pytest

from storage import JobQueue, LeaseLost, NewJob, NotAllowed, QueueConfig, WorkerId, WorkerInfo
from tests.storage.conftest import new_job, png_bytes


def _worker(i: int) -> WorkerId:
    return WorkerId(owner=f"test-host:{1000 + i}:w{i}", host="test-host", pid=1000 + i)


async def test_enqueue_then_claim_in_order(make_queue, limits):
    q = await make_queue()
    a = await q.enqueue(new_job(["a"]), limits)
    b = await q.enqueue(new_job(["b"]), limits)
    assert (await q.position(a.id), await q.position(b.id)) == (1, 2)
    got = await q.claim(_worker(0))
    assert got.id == a.id and got.state == "running" and got.lease_owner == _worker(0).owner
    assert await q.position(a.id) == 0
    assert await q.position(b.id) == 1
    positions = [e.payload for e in await q.pending_events("cli") if e.kind == "position"]
    assert positions == [{"job_id": b.id, "position": 1}]


async def test_claim_on_empty_queue_returns_none(make_queue):
    q = await make_queue()
    assert await q.claim(_worker(0)) is None


async def test_claim_of_one_job_skips_older_queued_ones(make_queue, limits):
    # `svibot story` runs only its own job; older jobs stay queued for `svibot worker`.
    q = await make_queue()
    older = await q.enqueue(new_job(["older"]), limits)
    mine = await q.enqueue(new_job(["mine"]), limits)
    got = await q.claim(_worker(0), job_id=mine.id)
    assert got.id == mine.id and got.state == "running"
    assert (await q.get_job(older.id)).state == "queued"
    assert await q.claim(_worker(1), job_id=mine.id) is None  # already running: nobody else gets it
    assert (await q.claim(_worker(1))).id == older.id


def _claim_all(config: QueueConfig, photos: str, index: int, out: str) -> None:
    async def run() -> list[int]:
        q = await JobQueue.open(config, Path(photos))
        got = []
        while (job := await q.claim(_worker(index))) is not None:
            got.append(job.id)
        await q.close()
        return got

    Path(out).write_text(json.dumps(asyncio.run(run())))


async def test_four_processes_claim_each_job_exactly_once(make_queue, queue_config, data_dir, limits, tmp_path):
    q = await make_queue()
    photo = png_bytes()
    ids = [(await q.enqueue(new_job([f"p{i}"], photo=photo), limits)).id for i in range(200)]
    ctx = mp.get_context("spawn")
    outs = [tmp_path / f"claimed{i}.json" for i in range(4)]
    procs = [ctx.Process(target=_claim_all, args=(queue_config(lease_seconds=600), str(data_dir.photos), i,
                                                  str(outs[i])))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    claimed = [jid for out in outs for jid in json.loads(out.read_text())]
    assert sorted(claimed) == sorted(ids)
    assert len(set(claimed)) == len(claimed) == 200
    jobs = await q.list_jobs(states=["running"], limit=500)
    assert len(jobs) == 200


async def test_expired_lease_requeues_with_attempts_then_fails(make_queue, clock, limits):
    q = await make_queue(lease_seconds=10.0, max_attempts=2)
    job = await q.enqueue(new_job(), limits)
    w = _worker(0)
    assert (await q.claim(w)).id == job.id
    clock.advance(5)
    assert await q.reap_expired() == []  # still leased
    await q.heartbeat(job.id, w)
    clock.advance(9)
    assert await q.reap_expired() == []  # the heartbeat extended it
    clock.advance(2)
    assert await q.reap_expired() == [job.id]
    again = await q.get_job(job.id)
    assert (again.state, again.attempts, again.lease_owner) == ("queued", 1, None)
    with pytest.raises(LeaseLost):
        await q.heartbeat(job.id, w)  # the dead worker's lease is gone
    w2 = _worker(1)
    assert (await q.claim(w2)).id == job.id
    clock.advance(11)
    await q.reap_expired()
    final = await q.get_job(job.id)
    assert final.state == "failed" and final.attempts == 2
    assert "stopped 2 times" in final.error
    kinds = [e.kind for e in await q.events_for_job(job.id)]
    assert kinds[-1] == "failed"


async def test_reclaim_dead_local_worker_at_once(make_queue, limits):
    q = await make_queue()
    job = await q.enqueue(new_job(), limits)
    dead, me = _worker(0), _worker(1)
    await q.claim(dead)
    other_host = WorkerId(owner="elsewhere:1:x", host="elsewhere", pid=1)
    job2 = await q.enqueue(new_job(), limits)
    await q.claim(other_host)
    reclaimed = await q.reclaim_dead_local(me, alive=lambda pid: pid != dead.pid)
    assert reclaimed == [job.id]
    assert (await q.get_job(job.id)).state == "queued"
    assert (await q.get_job(job2.id)).state == "running"  # other hosts wait for expiry


async def test_release_on_shutdown_keeps_attempts(make_queue, limits):
    q = await make_queue()
    job = await q.enqueue(new_job(), limits)
    w = _worker(0)
    await q.claim(w)
    await q.release(job.id, w)
    again = await q.get_job(job.id)
    assert (again.state, again.attempts) == ("queued", 0)


async def test_cancel_queued_is_immediate(make_queue, limits):
    q = await make_queue()
    job = await q.enqueue(new_job(user="alice"), limits)
    with pytest.raises(NotAllowed):
        await q.cancel(job.id, by_user="mallory")
    assert (await q.get_job(job.id)).state == "queued"
    done = await q.cancel(job.id, by_user="alice")
    assert done.state == "cancelled"
    assert await q.claim(_worker(0)) is None
    assert [e.kind for e in await q.events_for_job(job.id)] == ["cancelled"]


async def test_cancel_running_sets_flag_seen_on_heartbeat(make_queue, limits):
    q = await make_queue()
    job = await q.enqueue(new_job(user="alice"), limits)
    w = _worker(0)
    await q.claim(w)
    assert await q.heartbeat(job.id, w) is False
    flagged = await q.cancel(job.id, by_user="admin", is_admin=True)
    assert flagged.state == "running" and flagged.cancel_requested
    assert await q.heartbeat(job.id, w) is True
    final = await q.mark_cancelled(job.id, w, segments_done=1)
    assert final.state == "cancelled"


async def test_state_survives_reopen(make_queue, limits, tmp_path):
    q = await make_queue()
    job = await q.enqueue(new_job(["one", "two"]), limits)
    w = _worker(0)
    await q.claim(w)
    video, carry = tmp_path / "s0.mp4", tmp_path / "c0.pt"
    video.write_bytes(b"video-bytes" * 1000)
    carry.write_bytes(bytes(range(256)) * 9000)  # > 2 MiB: spans several stored chunks
    await q.record_segment(job.id, w, index=0, prompt="one", video_path=video, carry_path=carry,
                           num_frames=81, duration_s=5.06, gen_seconds=12.0)
    await q.close()
    q2 = await make_queue()
    again = await q2.get_job(job.id)
    assert again.state == "running" and again.prompts == ["one", "two"]
    segs = await q2.segments(job.id)
    assert [(s.index, s.num_frames) for s in segs] == [(0, 81)]
    assert (await q2.local_file(segs[0].video_path)).read_bytes() == video.read_bytes()
    assert (await q2.local_file(segs[0].carry_path)).read_bytes() == carry.read_bytes()
    stats = await q2.stats()
    assert stats.running == 1 and stats.seconds_per_segment == pytest.approx(12.0)
    assert await q2.segments_ahead(job.id) == 1


async def test_outbox_delivers_each_event_once_across_restart(make_queue, limits, tmp_path):
    q = await make_queue()
    job = await q.enqueue(new_job(["one", "two"], platform="telegram"), limits)
    w = _worker(0)
    await q.claim(w)
    for i in range(2):
        (tmp_path / f"{i}.mp4").write_bytes(b"segment %d" % i)
        await q.record_segment(job.id, w, index=i, prompt=["one", "two"][i], video_path=tmp_path / f"{i}.mp4",
                               carry_path=None, num_frames=9, duration_s=0.5, gen_seconds=1.0)
    (tmp_path / "story.mp4").write_bytes(b"the whole story")
    await q.complete(job.id, w, tmp_path / "story.mp4", {"num_segments": 2})
    assert await q.pending_events("discord") == []
    pending = await q.pending_events("telegram")
    assert [e.kind for e in pending] == ["segment", "segment", "done"]
    # The bot delivers the first segment, then "crashes" before delivering the rest.
    assert await q.mark_delivered(pending[0].id, "msg-100") is True
    await q.close()
    q2 = await make_queue()
    after = await q2.pending_events("telegram")
    assert [e.id for e in after] == [pending[1].id, pending[2].id]
    assert await q2.mark_delivered(pending[0].id, "msg-dup") is False  # never marked twice
    for e in after:
        assert await q2.mark_delivered(e.id, f"m{e.id}")
    assert await q2.pending_events("telegram") == []
    events = await q2.events_for_job(job.id)
    assert events[0].message_id == "msg-100" and events[0].delivered_at is not None


async def test_lost_lease_blocks_late_writes(make_queue, clock, limits, tmp_path):
    q = await make_queue(lease_seconds=1.0)
    job = await q.enqueue(new_job(), limits)
    w = _worker(0)
    await q.claim(w)
    clock.advance(2)
    await q.reap_expired()
    with pytest.raises(LeaseLost):
        await q.record_segment(job.id, w, index=0, prompt="walk", video_path=tmp_path / "x.mp4",
                               carry_path=None, num_frames=1, duration_s=0.1, gen_seconds=0.1)
    assert await q.segments(job.id) == []


async def test_worker_liveness(make_queue, clock):
    q = await make_queue()
    w = _worker(0)
    assert (await q.stats()).workers_online == 0
    await q.worker_seen(w, "tiny")
    assert (await q.stats()).workers_online == 1
    clock.advance(q.config.worker_online_seconds + 1)
    assert (await q.stats()).workers_online == 0
    await q.worker_seen(w, "tiny")
    await q.worker_gone(w)
    assert (await q.stats()).workers_online == 0


async def test_claim_serves_only_presets_the_worker_can_run(make_queue, limits):
    q = await make_queue()
    big = await q.enqueue(NewJob(**{**new_job().__dict__, "settings": {"preset": "q8_0"}}), limits)
    small = await q.enqueue(NewJob(**{**new_job().__dict__, "settings": {"preset": "q4_k_m"}}), limits)
    default = await q.enqueue(new_job(), limits)  # no preset: whatever the claiming worker runs
    t4 = _worker(0)
    assert (await q.claim(t4, presets={"q4_k_m", "tiny"})).id == small.id
    assert (await q.claim(t4, presets={"q4_k_m", "tiny"})).id == default.id
    assert await q.claim(t4, presets={"q4_k_m", "tiny"}) is None  # q8_0 does not fit this one
    assert await q.claim(t4, presets=set()) is None
    assert (await q.claim(_worker(1))).id == big.id  # no filter: serves anything


async def test_workers_listing_shows_what_each_is_doing(make_queue, clock, limits, tmp_path):
    q = await make_queue()
    a, b = _worker(0), _worker(1)
    await q.register_worker(a, WorkerInfo(preset="q4_k_m", gpu="Tesla T4", vram_gib=14.5, ram_gib=12.0))
    clock.advance(1)
    await q.register_worker(b, WorkerInfo(preset="tiny", gpu="cpu"))
    job = await q.enqueue(new_job(["one", "two", "three"]), limits)
    await q.claim(a)
    (tmp_path / "0.mp4").write_bytes(b"x")
    await q.record_segment(job.id, a, index=0, prompt="one", video_path=tmp_path / "0.mp4", carry_path=None,
                           num_frames=9, duration_s=0.5, gen_seconds=1.0)
    listed = await q.workers()
    assert [(w.worker_id, w.gpu, w.vram_gib, w.job_id, w.segments_done, w.num_segments) for w in listed] == [
        (a.owner, "Tesla T4", 14.5, job.id, 1, 3), (b.owner, "cpu", None, None, None, None)]
    assert [w.doing() for w in listed] == [f"job #{job.id}, segment 2 of 3", "idle"]
    clock.advance(q.config.worker_online_seconds + 1)
    await q.worker_seen(b)  # b heartbeats, a went quiet
    assert [(w.online, w.preset) for w in await q.workers()] == [(False, "q4_k_m"), (True, "tiny")]


async def test_watchers_wake_on_new_work_and_news(make_queue, limits, backend):
    q = await make_queue()
    work, news = q.watch("jobs"), q.watch("events")
    assert await work.wait(0.05) is False  # nothing yet: the poll timeout runs out
    await q.enqueue(new_job(), limits)
    assert await work.wait(5) is True  # kept until someone waits: no lost wake-up
    # A wait clears what it consumed. On PostgreSQL the commit's NOTIFY comes back through the LISTEN
    # connection as well, at most once and at a time that depends on the machine's load: one more
    # wake-up may be pending, never two.
    if await work.wait(0.05):
        assert backend == "postgresql", "the wake-up was not cleared by the wait that consumed it"
        assert await work.wait(0.05) is False
    await q.enqueue(new_job(), limits)
    assert await news.wait(0.05) is False  # queueing alone sends no message
    await q.claim(_worker(0))  # the job behind it moves up: news for the bots
    assert await news.wait(5) is True
    with pytest.raises(ValueError, match="topic"):
        q.watch("jbos")
