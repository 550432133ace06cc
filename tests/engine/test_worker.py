"""The worker on the tiny preset: order, resume after kill -9, cancel, failures, shutdown."""
from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.models.config import EngineConfig
from engine.svi import generate_story
from engine.video import read_frames
from engine.worker import Worker, WorkerConfig
from storage import DataDir, DiskFull, JobQueue, Limits, NewJob, QueueConfig

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "examples" / "chelsea.jpg"


def make_config(root: Path) -> WorkerConfig:
    data = DataDir(root)
    return WorkerConfig(data_dir=data, engine=EngineConfig(preset="tiny", models_dir=data.models),
                        poll_s=0.05, heartbeat_s=0.5, progress_interval_s=0.0)


async def open_queue(cfg: WorkerConfig, **kw) -> JobQueue:
    return await JobQueue.open(QueueConfig(db_path=cfg.data_dir.db_path, **kw), cfg.data_dir.photos)


def story_job(prompts=("walk", "run", "fly"), seed=5, photo: bytes | None = None, **settings) -> NewJob:
    return NewJob(platform="cli", chat_id="c", user_id="u", photo=photo or PHOTO.read_bytes(),
                  prompts=list(prompts), settings={"seed": seed, "preset": "tiny", **settings})


async def run_until_empty(queue: JobQueue, cfg: WorkerConfig, **kw) -> Worker:
    worker = Worker(queue, cfg, **kw)
    await worker.run(asyncio.Event(), once=True)
    return worker


async def test_two_jobs_run_in_order_and_stream_segments(tmp_path):
    cfg = make_config(tmp_path / "d")
    queue = await open_queue(cfg)
    a = await queue.enqueue(story_job(["a1", "a2"]), Limits())
    b = await queue.enqueue(story_job(["b1"]), Limits())
    await run_until_empty(queue, cfg)
    ja, jb = await queue.get_job(a.id), await queue.get_job(b.id)
    assert (ja.state, jb.state) == ("done", "done")
    assert ja.started_at < jb.started_at and ja.finished_at <= jb.started_at
    kinds = [e.kind for e in await queue.events_for_job(a.id)]
    assert kinds.index("segment") < kinds.index("done") and kinds.count("segment") == 2
    assert kinds[-1] == "done" and "progress" in kinds
    segs = await queue.segments(a.id)
    assert [s.num_frames for s in segs] == [13, 8]
    assert all(Path(s.video_path).exists() and Path(s.carry_path).exists() for s in segs)
    assert len(read_frames(ja.final_path)) == 21
    await queue.close()


def _db_segments(db: Path, job_id: int) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT idx, created_at FROM segments WHERE job_id = ? ORDER BY idx", (job_id,)).fetchall()


def _worker_cmd(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "svibot.cli", "--data-dir", str(root), "--log-level", "WARNING",
            "worker", "--preset", "tiny", *extra]


async def test_kill_9_mid_job_resumes_from_last_segment(tmp_path):
    cfg = make_config(tmp_path / "crash")
    queue = await open_queue(cfg)
    # 12 steps make each tiny segment slow enough to kill the worker between segments.
    job = await queue.enqueue(story_job(num_inference_steps=12), Limits())
    await queue.close()
    proc = subprocess.Popen(_worker_cmd(cfg.data_dir.root), cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(_db_segments(cfg.data_dir.db_path, job.id)) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "segment 1 never got recorded"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _db_segments(cfg.data_dir.db_path, job.id)
    assert len(before) == 2, "the worker finished segment 2 before it was killed; make segments slower"
    seg1_mtime = cfg.data_dir.segment_video(job.id, 1).stat().st_mtime_ns

    # A new worker reclaims the dead worker's job at once (same host, dead pid) and finishes it.
    done = subprocess.run(_worker_cmd(cfg.data_dir.root, "--once"), cwd=REPO, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()
    after = _db_segments(cfg.data_dir.db_path, job.id)
    assert after[:2] == before  # segments 1 and 2 were not regenerated
    assert cfg.data_dir.segment_video(job.id, 1).stat().st_mtime_ns == seg1_mtime
    queue = await open_queue(cfg)
    resumed = await queue.get_job(job.id)
    assert resumed.state == "done" and resumed.attempts == 1
    await queue.close()

    # The stitched video equals an uninterrupted run with the same seed.
    ref_cfg = make_config(tmp_path / "ref")
    ref_queue = await open_queue(ref_cfg)
    ref = await ref_queue.enqueue(story_job(num_inference_steps=12), Limits())
    await run_until_empty(ref_queue, ref_cfg)
    ref_job = await ref_queue.get_job(ref.id)
    await ref_queue.close()
    np.testing.assert_array_equal(read_frames(resumed.final_path), read_frames(ref_job.final_path))
    a = torch.load(ref_cfg.data_dir.segment_carry(ref.id, 2))
    b = torch.load(cfg.data_dir.segment_carry(job.id, 2))
    assert torch.equal(a, b)


async def test_cancel_during_segment_2_stops_within_one_step(tmp_path):
    cfg = make_config(tmp_path / "d")
    queue = await open_queue(cfg)
    job = await queue.enqueue(story_job(num_inference_steps=6), Limits())
    steps_after_cancel = []

    def generate(*args, on_progress, **kw):
        def progress(p):
            on_progress(p)
            if steps_after_cancel:
                steps_after_cancel.append(p)
            if p.segment == 1 and p.step == 2 and not steps_after_cancel:
                fut = asyncio.run_coroutine_threadsafe(queue.cancel(job.id, by_user="u"), loop)
                fut.result()
                steps_after_cancel.append(p)
        return generate_story(*args, on_progress=progress, **kw)

    loop = asyncio.get_running_loop()
    await run_until_empty(queue, cfg, generate=generate)
    final = await queue.get_job(job.id)
    assert final.state == "cancelled"
    assert len(steps_after_cancel) == 1  # no further step started after the cancel was seen
    segs = await queue.segments(job.id)
    assert [s.index for s in segs] == [0]
    assert Path(segs[0].video_path).exists()
    assert [e.kind for e in await queue.events_for_job(job.id)][-1] == "cancelled"
    await queue.close()


async def test_corrupt_photo_fails_clearly_and_next_job_completes(tmp_path):
    cfg = make_config(tmp_path / "d")
    queue = await open_queue(cfg)
    from PIL import Image
    import io
    buf = io.BytesIO()
    Image.new("RGB", (128, 96), "teal").save(buf, "PNG")
    bad = await queue.enqueue(story_job(["x"], photo=buf.getvalue()), Limits())
    Path(bad.photo_path).write_bytes(b"garbage, the file rotted on disk")
    good = await queue.enqueue(story_job(["y"]), Limits())
    await run_until_empty(queue, cfg)
    failed = await queue.get_job(bad.id)
    assert failed.state == "failed" and "not an image" in failed.error.lower()
    assert (await queue.get_job(good.id)).state == "done"
    await queue.close()


async def test_oom_becomes_a_failed_job_and_worker_keeps_serving(tmp_path):
    cfg = make_config(tmp_path / "d")
    queue = await open_queue(cfg)
    a = await queue.enqueue(story_job(["a", "b", "c"]), Limits())
    b = await queue.enqueue(story_job(["d"]), Limits())
    calls = []

    def generate(*args, on_progress, **kw):
        calls.append(args[2])

        def progress(p):
            if args[2] == ["a", "b", "c"] and p.segment == 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            on_progress(p)
        return generate_story(*args, on_progress=progress, **kw)

    await run_until_empty(queue, cfg, generate=generate)
    failed = await queue.get_job(a.id)
    assert failed.state == "failed"
    assert failed.error == "ran out of GPU memory at segment 3 of 3; try a smaller preset or fewer frames"
    assert len(await queue.segments(a.id)) == 2  # finished segments are kept
    assert (await queue.get_job(b.id)).state == "done"
    await queue.close()


async def test_shutdown_releases_the_job_for_the_next_start(tmp_path):
    cfg = make_config(tmp_path / "d")
    queue = await open_queue(cfg)
    job = await queue.enqueue(story_job(["a", "b"]), Limits())
    stop = asyncio.Event()

    def generate(*args, on_progress, **kw):
        def progress(p):
            on_progress(p)
            if p.segment == 1:
                stop.set()  # SIGTERM arrives during segment 2
        return generate_story(*args, on_progress=progress, **kw)

    await Worker(queue, cfg, generate=generate).run(stop)
    released = await queue.get_job(job.id)
    assert (released.state, released.attempts, released.lease_owner) == ("queued", 0, None)
    assert len(await queue.segments(job.id)) == 1
    assert (await queue.stats()).workers_online == 0  # the liveness row is removed on exit
    await run_until_empty(queue, cfg)
    assert (await queue.get_job(job.id)).state == "done"
    await queue.close()


async def test_full_disk_pauses_the_job_and_stops_a_draining_worker(tmp_path, monkeypatch):
    import errno
    import engine.worker as worker_mod
    cfg = make_config(tmp_path / "d")
    queue = await open_queue(cfg)
    job = await queue.enqueue(story_job(["a"]), Limits())
    real = worker_mod.write_mp4

    def full_disk(frames, path, fps):
        from storage.files import atomic_path
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half a video")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(worker_mod, "write_mp4", full_disk)
    with pytest.raises(DiskFull):  # a draining worker stops: the next write would fail too
        await run_until_empty(queue, cfg)
    paused = await queue.get_job(job.id)
    assert paused.state == "queued" and paused.attempts == 0  # paused, not failed: it resumes later
    last = (await queue.events_for_job(job.id))[-1]
    assert last.kind == "progress" and "disk is full" in last.payload["paused"]
    leftovers = list(cfg.data_dir.job_dir(job.id).glob("*")) if cfg.data_dir.job_dir(job.id).exists() else []
    assert leftovers == []  # nothing half-written
    monkeypatch.setattr(worker_mod, "write_mp4", real)
    await queue.close()


async def test_a_stored_quality_reaches_the_engine_as_the_whole_recipe(tmp_path):
    from dataclasses import replace

    from engine.config import RECIPES

    fast = RECIPES["fast"].with_overrides({"num_inference_steps": 6, "guidance_high": 1.5, "guidance_low": 1.5})
    cfg = replace(make_config(tmp_path / "d"), recipes={**RECIPES, "fast": fast})  # an operator override
    queue = await open_queue(cfg)
    jobs = [await queue.enqueue(story_job(["a"], quality="quality"), Limits()),
            await queue.enqueue(story_job(["b"]), Limits())]
    seen = []

    def generate(models, photo, prompts, settings, **kw):
        seen.append(settings)
        return generate_story(models, photo, prompts, replace(settings, num_frames=5), **kw)

    await run_until_empty(queue, cfg, generate=generate)
    assert [(await queue.get_job(j.id)).state for j in jobs] == ["done", "done"]
    quality, default = seen
    assert (quality.num_inference_steps, quality.guidance_high, quality.guidance_low) == (50, 5.0, 5.0)
    assert (quality.lightx2v_high, quality.lightx2v_low, quality.svi_high, quality.svi_low) == (0.0, 0.0, 1.0, 1.0)
    assert quality.boundary_ratio == 0.875 and quality.shift == 5.0
    # a job that names no quality gets `fast`, with the operator's changes to it
    assert (default.num_inference_steps, default.guidance_high, default.guidance_low) == (6, 1.5, 1.5)
    assert (default.lightx2v_high, default.lightx2v_low) == (0.5, 1.0)
    progress = [e.payload for e in await queue.events_for_job(jobs[0].id) if e.kind == "progress"]
    assert progress and {p["num_steps"] for p in progress} == {50}
    await queue.close()


async def test_idle_worker_waits_through_many_polls_then_serves_a_new_job(tmp_path):
    # Idle polls end in a timeout, and asyncio's timeouts are not the builtin TimeoutError before
    # Python 3.11 (an idle worker once crashed there after one poll); it must keep polling everywhere.
    cfg = make_config(tmp_path / "idle")
    queue = await open_queue(cfg)
    stop = asyncio.Event()
    worker_task = asyncio.create_task(Worker(queue, cfg).run(stop))
    await asyncio.sleep(cfg.poll_s * 8)
    assert not worker_task.done(), worker_task.exception() if worker_task.done() else None
    job = await queue.enqueue(story_job(["late"]), Limits())
    for _ in range(400):
        if (await queue.get_job(job.id)).state == "done":
            break
        await asyncio.sleep(cfg.poll_s)
    stop.set()
    assert await asyncio.wait_for(worker_task, 30) == 1
    assert (await queue.get_job(job.id)).state == "done"
    await queue.close()
