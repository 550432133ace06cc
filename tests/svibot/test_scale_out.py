"""Several machines, simulated: `svibot worker` processes with their own empty data dirs (no shared
files) on one PostgreSQL database, draining tiny stories; a worker killed mid-story is taken over
by another once its lease expires. Outputs must equal single-worker runs with the same seeds."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engine.models.config import EngineConfig
from engine.video import read_frames
from engine.worker import Worker, WorkerConfig
from svibot.cli import main
from storage import DataDir, JobQueue, Limits, NewJob, QueueConfig, WorkerId, WorkerInfo
from storage.pg_schema import SCHEMA_VERSION
from tests.fakes.scripted_worker import count_frames
from tests.fakes.telegram_api import FakeTelegram

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "examples" / "chelsea.jpg"
STORIES = [(["walk", "run"], 11), (["fly"], 12), (["swim", "dive"], 13), (["sit"], 14),
           (["jump", "land"], 15), (["spin"], 16)]


def story(prompts, seed, **settings) -> NewJob:
    return NewJob(platform="cli", chat_id="c", user_id="u", photo=PHOTO.read_bytes(), prompts=list(prompts),
                  settings={"seed": seed, "preset": "tiny", **settings})


def worker_cmd(root: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "svibot.cli", "--data-dir", str(root), "--log-level", "WARNING",
            "worker", "--preset", "tiny", "--database-url", url, *extra]


async def open_pg(url: str, root: Path, **kw) -> JobQueue:
    data = DataDir(root)
    return await JobQueue.open(QueueConfig(db_path=data.db_path, database_url=url, **kw), data.photos)


async def single_worker_frames(root: Path, jobs: list[NewJob]) -> list[np.ndarray]:
    """The reference: the same stories, one worker, the SQLite queue, in this process."""
    data = DataDir(root)
    cfg = WorkerConfig(data_dir=data, engine=EngineConfig(preset="tiny", models_dir=data.models),
                       poll_s=0.05, heartbeat_s=0.5, progress_interval_s=0.0)
    queue = await JobQueue.open(QueueConfig(db_path=data.db_path), data.photos)
    try:
        ids = [(await queue.enqueue(j, Limits())).id for j in jobs]
        await Worker(queue, cfg).run(asyncio.Event(), once=True)
        return [read_frames((await queue.get_job(i)).final_path) for i in ids]
    finally:
        await queue.close()


async def wait_for(check, timeout: float, procs: list[subprocess.Popen], what: str):
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        for p in procs:
            assert p.poll() is None, f"a worker exited early while waiting for {what}: {p.stderr.read().decode()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def stop_all(procs: list[subprocess.Popen]) -> list[str]:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    errors = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        errors.append(err.decode())
    return errors


async def test_three_workers_without_shared_files_drain_the_queue_exactly_once(pg_url, tmp_path):
    bot = await open_pg(pg_url, tmp_path / "bot")
    roots = [tmp_path / f"gpu{i}" for i in range(3)]
    procs = [subprocess.Popen(worker_cmd(r, pg_url), cwd=REPO, stderr=subprocess.PIPE) for r in roots]
    try:
        # Queue only once all three listen, so they compete for the same jobs.
        async def three_online():
            return len([w for w in await bot.workers() if w.online]) == 3
        await wait_for(three_online, 120, procs, "three workers to register")
        ids = [(await bot.enqueue(story(p, s), Limits())).id for p, s in STORIES]

        async def all_done():
            jobs = [await bot.get_job(i) for i in ids]
            assert not [j for j in jobs if j.state == "failed"], [j.error for j in jobs]
            return all(j.state == "done" for j in jobs) and jobs
        jobs = await wait_for(all_done, 240, procs, "the stories to finish")
    finally:
        errors = stop_all(procs)
    assert all(p.returncode == 0 for p in procs), errors
    assert [w for w in await bot.workers()] == []  # each said goodbye on SIGTERM

    made_by: dict[int, set[int]] = {}
    for job, (prompts, _) in zip(jobs, STORIES):
        assert job.attempts == 0
        segs = await bot.segments(job.id)
        assert [s.index for s in segs] == list(range(len(prompts)))
        kinds = [e.kind for e in await bot.events_for_job(job.id)]
        assert kinds.count("segment") == len(prompts) and kinds.count("done") == 1  # each recorded once
        made_by[job.id] = {i for i, r in enumerate(roots) if DataDir(r).story_video(job.id).exists()}
        assert len(made_by[job.id]) == 1  # one worker stitched it
    assert len(set().union(*made_by.values())) >= 2, f"one worker did everything: {made_by}"
    for r in roots:  # no worker needed a file from another's disk: every input came from the database
        assert not (r / "queue.sqlite3").exists()

    # The bot's machine reads every story back from the database; frames equal a single-worker run.
    finals = [await bot.local_file(j.final_path, job_id=j.id) for j in jobs]
    assert all(f.is_relative_to(tmp_path / "bot") for f in finals)
    got = [read_frames(f) for f in finals]
    await bot.close()
    want = await single_worker_frames(tmp_path / "single", [story(p, s) for p, s in STORIES])
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


async def test_a_worker_killed_mid_story_is_taken_over_from_the_database(pg_url, tmp_path):
    lease = {"SVIBOT_LEASE_SECONDS": "3"}
    bot = await open_pg(pg_url, tmp_path / "bot", lease_seconds=3.0)
    roots = [tmp_path / "gpu0", tmp_path / "gpu1"]
    env = {**os.environ, **lease}
    procs = [subprocess.Popen(worker_cmd(r, pg_url), cwd=REPO, env=env, stderr=subprocess.PIPE) for r in roots]
    try:
        async def two_online():
            return len([w for w in await bot.workers() if w.online]) == 2
        await wait_for(two_online, 120, procs, "two workers to register")
        # 12 steps make each tiny segment slow enough to kill its worker between segments.
        job = await bot.enqueue(story(["walk", "run", "fly"], 5, num_inference_steps=12), Limits())

        async def two_segments():
            return len(await bot.segments(job.id)) >= 2
        await wait_for(two_segments, 120, procs, "two segments")
        holder = await bot.get_job(job.id)
        victim = next(p for p in procs if p.pid == holder.lease_pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        before = [(s.index, s.video_path) for s in await bot.segments(job.id)]
        assert len(before) == 2, "the worker finished segment 3 before it was killed; make segments slower"
        survivor = next(p for p in procs if p is not victim)

        async def done():
            j = await bot.get_job(job.id)
            return j.state in ("done", "failed") and j
        final = await wait_for(done, 120, [survivor], "the takeover to finish")
    finally:
        stop_all(procs)
    assert final.state == "done" and final.attempts == 1, final.error
    after = await bot.segments(job.id)
    assert [(s.index, s.video_path) for s in after][:2] == before  # not regenerated
    survivor_root = roots[procs.index(survivor)]
    # The survivor read segment 2's carry from the database into its own cache to resume from it.
    carry_2 = (await bot.local_file(after[1].carry_path)).read_bytes()
    assert (survivor_root / after[1].carry_path).read_bytes() == carry_2
    carry_3 = torch.load(await bot.local_file(after[2].carry_path))
    got = read_frames(await bot.local_file(final.final_path))
    await bot.close()
    single = tmp_path / "single"
    (want,) = await single_worker_frames(single, [story(["walk", "run", "fly"], 5, num_inference_steps=12)])
    np.testing.assert_array_equal(got, want)
    assert torch.equal(carry_3, torch.load(DataDir(single).segment_carry(1, 2)))


async def test_telegram_bot_and_worker_on_two_machines_share_only_the_database(pg_url, tmp_path):
    """`svibot serve --telegram --no-worker` on one "machine", `svibot worker` on another."""
    chat = 4242
    async with FakeTelegram() as fake:
        base = {**os.environ, "SVIBOT_DATABASE_URL": pg_url, "SVIBOT_PROGRESS_INTERVAL": "0"}
        bot_env = {**base, "TELEGRAM_BOT_TOKEN": fake.token, "TELEGRAM_API_BASE_URL": fake.base_url,
                   "SVIBOT_DATA_DIR": str(tmp_path / "bot")}
        gpu_env = {**base, "SVIBOT_DATA_DIR": str(tmp_path / "gpu"), "SVIBOT_PRESET": "tiny"}
        procs = [subprocess.Popen([sys.executable, "-m", "svibot.cli", "serve", "--telegram", "--no-worker"],
                                  cwd=REPO, env=bot_env, stderr=subprocess.PIPE),
                 subprocess.Popen([sys.executable, "-m", "svibot.cli", "worker"], cwd=REPO, env=gpu_env,
                                  stderr=subprocess.PIPE)]
        try:
            await fake.wait_for(lambda: fake.method_calls("getUpdates"), timeout=60, what="polling")
            fake.user_message(chat, chat, caption="/story walk | run", photo=PHOTO.read_bytes())
            await fake.wait_for(lambda: len(fake.sent_to(chat, "sendVideo")) == 3, timeout=120, what="the story")
        finally:
            errors = await asyncio.to_thread(stop_all, procs)  # the fake server keeps answering meanwhile
    assert [p.returncode for p in procs] == [0, 0], [e[-3000:] for e in errors]
    password = pg_url.split(":")[2].split("@")[0]
    assert not [e for e in errors if password in e or fake.token in e]
    videos = fake.sent_to(chat, "sendVideo")
    assert [v.text for v in videos[:2]] == ["Segment 1/2: walk", "Segment 2/2: run"]
    frames = []
    for i, video in enumerate(videos):
        path = tmp_path / f"v{i}.mp4"
        path.write_bytes(video.data)
        frames.append(count_frames(path))
    assert frames == [13, 8, 21]
    assert not (tmp_path / "bot" / "jobs" / "000001" / "carry_000.pt").exists()  # the bot never needs carries
    assert list((tmp_path / "gpu" / "jobs" / "000001").glob("photo.*"))  # it reached the GPU through the database


def test_db_upgrade_workers_and_worker_role_commands(pg_url, tmp_path, capsys):
    data = ["--data-dir", str(tmp_path / "d")]
    assert main([*data, "db", "upgrade", "--database-url", pg_url]) == 0
    out = capsys.readouterr().out
    assert f"schema version {SCHEMA_VERSION} (was 0)" in out and ":<redacted>@127.0.0.1" in out and pg_url not in out
    os.environ["SVIBOT_DATABASE_URL"] = pg_url
    try:
        assert main([*data, "db", "upgrade"]) == 0
        assert f"already at schema version {SCHEMA_VERSION}" in capsys.readouterr().out

        async def register():
            q = await open_pg(pg_url, tmp_path / "d")
            await q.register_worker(WorkerId("colab:7:x", "colab", 7), WorkerInfo("q4_k_m", "Tesla T4", 14.5, 12))
            await q.close()
        asyncio.run(register())
        assert main([*data, "workers", "--json"]) == 0
        (w,) = json.loads(capsys.readouterr().out)
        assert (w["host"], w["gpu"], w["vram_gib"], w["preset"], w["online"]) == ("colab", "Tesla T4", 14.5, "q4_k_m", True)
        assert main([*data, "workers"]) == 0
        text = capsys.readouterr().out
        assert "colab:7" in text and "Tesla T4" in text and "14.5 GiB" in text and "idle" in text
        assert main([*data, "serve", "--telegram", "--snapshot-to", str(tmp_path / "s.db")]) == 2
        assert "pg_dump" in capsys.readouterr().err
    finally:
        del os.environ["SVIBOT_DATABASE_URL"]
    assert main(["db", "worker-role", "svibot_worker"]) == 0
    grants = capsys.readouterr().out
    assert "GRANT UPDATE (state, attempts" in grants and "TO svibot_worker;" in grants
    assert main(["db", "worker-role", "Robert'); DROP"]) == 2
    assert "lower-case SQL identifier" in capsys.readouterr().err
    assert main([*data, "jobs", "--database-url", "postgresql://me:hunter2@db.example.com:99999/q"]) == 2
    err = capsys.readouterr().err
    assert "malformed" in err and "hunter2" not in err
