"""Data lifetime on both backends: finished jobs go after the retention time (never before their
chat got them), `/forget` takes one user's jobs at once; exactly those rows and files go."""
from __future__ import annotations

from pathlib import Path

from storage import WorkerId
from storage.user_settings import DEFAULTS

from .conftest import new_job, png_bytes

DAY = 86400.0
ME = WorkerId(owner="w1", host="h", pid=1)


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and p.suffix != ".sqlite3" and "-wal" not in p.name
            and "-shm" not in p.name}


async def run_job(q, data_dir, *, deliver: bool = True):
    """Claim the oldest queued job, write and record one segment and the story, finish it."""
    job = await q.claim(ME)
    video = data_dir.segment_video(job.id, 0)
    carry = data_dir.segment_carry(job.id, 0)
    for p in (video, carry):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"frames of job %d" % job.id)
    await q.record_segment(job.id, ME, index=0, prompt="walk", video_path=video, carry_path=carry,
                           num_frames=13, duration_s=0.8, gen_seconds=1.0)
    final = data_dir.story_video(job.id)
    final.write_bytes(b"story of job %d" % job.id)
    await q.complete(job.id, ME, final)
    if deliver:
        for platform in ("cli", "telegram"):
            for e in await q.pending_events(platform, job_id=job.id):
                await q.mark_delivered(e.id)
    return job


async def rows(q, job_id: int) -> tuple[int, int, int]:
    (jobs,) = await q._db.fetchone("SELECT COUNT(*) FROM jobs WHERE id = ?", job_id)
    (segs,) = await q._db.fetchone("SELECT COUNT(*) FROM segments WHERE job_id = ?", job_id)
    (events,) = await q._db.fetchone("SELECT COUNT(*) FROM events WHERE job_id = ?", job_id)
    return int(jobs), int(segs), int(events)


async def test_retention_deletes_only_old_delivered_finished_jobs(make_queue, data_dir, clock, limits):
    q = await make_queue()
    old = await q.enqueue(new_job(["walk"], user="u1", photo=png_bytes(color="red")), limits)
    await run_job(q, data_dir)
    undelivered = await q.enqueue(new_job(["walk"], user="u2", photo=png_bytes(color="blue")), limits)
    await run_job(q, data_dir, deliver=False)
    clock.advance(8 * DAY)
    recent = await q.enqueue(new_job(["walk"], user="u1", photo=png_bytes(color="green")), limits)
    await run_job(q, data_dir)
    waiting = await q.enqueue(new_job(["walk"], user="u1"), limits)
    keep_files = files_under(data_dir.root) - files_under(data_dir.job_dir(old.id))
    old_photo = (await q.get_job(old.id)).photo_path

    gone = await q.purge_finished(7 * DAY)
    assert gone.jobs == [old.id]
    assert await rows(q, old.id) == (0, 0, 0)
    assert not data_dir.job_dir(old.id).exists()
    if q.backend == "sqlite":  # the content-addressed photo went with its only job
        assert not Path(old_photo).exists()
        keep_files.remove(Path(old_photo))
    assert files_under(data_dir.root) == keep_files  # every other job's files are untouched
    for job in (undelivered, recent, waiting):
        assert (await rows(q, job.id))[0] == 1
    assert (await q.purge_finished(7 * DAY)).jobs == []  # nothing else is due


async def test_forget_deletes_one_users_jobs_and_files_at_once(make_queue, data_dir, clock, limits):
    q = await make_queue()
    shared = png_bytes(color="red")
    mine = await q.enqueue(new_job(["walk"], user="u1", photo=shared), limits)
    await run_job(q, data_dir)
    theirs = await q.enqueue(new_job(["walk"], user="u2", photo=shared), limits)  # the same photo
    await run_job(q, data_dir)
    mine_queued = await q.enqueue(new_job(["run"], user="u1", photo=png_bytes(color="pink")), limits)
    elsewhere = await q.enqueue(new_job(["run"], user="u1", platform="telegram"), limits)
    their_files = files_under(data_dir.job_dir(theirs.id))
    their_photo = (await q.get_job(theirs.id)).photo_path

    await q.set_user_setting("cli", "u1", "loop", True)
    await q.set_user_setting("cli", "u2", "loop", True)
    gone = await q.forget_user("cli", "u1")
    assert await q.user_settings("cli", "u1") == DEFAULTS  # their story defaults went with their jobs
    assert (await q.user_settings("cli", "u2"))["loop"] is True  # another user's defaults stay
    assert sorted(gone.jobs) == [mine.id, mine_queued.id]
    for job in (mine, mine_queued):
        assert await rows(q, job.id) == (0, 0, 0)
        assert not data_dir.job_dir(job.id).exists()
    assert (await rows(q, theirs.id))[:2] == (1, 1) and (await rows(q, elsewhere.id))[0] == 1
    assert files_under(data_dir.job_dir(theirs.id)) == their_files
    if q.backend == "sqlite":
        assert Path(their_photo).exists()  # still another user's photo
    assert (await q.local_file(their_photo, job_id=theirs.id)).read_bytes() == shared
