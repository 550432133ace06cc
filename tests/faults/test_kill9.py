"""A real `kill -9` at every step boundary of a segment, the stitch and a delivery.

Each case runs a real child process (`svibot story` on the tiny preset, or `svibot serve --telegram`
against the fake Bot API) that sends itself SIGKILL at the named boundary (`tests/support/crash.py`).
Then: the database passes `PRAGMA integrity_check`, every file a row names is whole, a restart
finishes the story with the same frames as an uninterrupted run, and nothing is sent twice except
the one upload that was in flight when the bot died (deliveries are at least once)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from engine.resume import load_carry, video_ok
from engine.video import read_frames
from storage import DataDir, JobQueue, Limits, NewJob, QueueConfig
from svibot.cli import main
from tests.fakes.telegram_api import FakeTelegram
from tests.support.crash import child_env
from tests.support.faults import DiskFault, half_written, integrity, job_rows, segment_rows

from .conftest import PHOTO, REPO, final_frames, story_argv, worker_once_argv

# point -> (segment rows the kill leaves, whether a half-written temp file is left beside them)
WORKER_POINTS = {
    "segment-files": (1, False),  # segment 2's files are whole on disk but not recorded: made again
    "segment-row": (1, False),  # the uncommitted row is rolled back with its transaction
    # (a kill after the commit, while the next segment runs: tests/engine/test_worker.py)
    "stitch": (2, True),  # the stitched temp file is whole but never renamed; the restart sweeps it
}


def segment_events(db: Path, job_id: int = 1) -> list[int]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT payload FROM events WHERE job_id = ? AND kind = 'segment' ORDER BY id",
                            (job_id,)).fetchall()
    return [json.loads(p)["index"] for (p,) in rows]


def event_kinds(db: Path, job_id: int = 1) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [k for (k,) in conn.execute("SELECT kind FROM events WHERE job_id = ? ORDER BY id", (job_id,))]


CHAT = 4242


@dataclass
class Child:
    data: Path
    mark: Path
    returncode: int
    stderr: str


def enqueue_telegram_story(data: Path) -> None:
    """The reference story's photo, prompts and settings, queued from a Telegram chat."""
    dd = DataDir(data)

    async def enqueue() -> None:
        async with await JobQueue.open(QueueConfig(db_path=dd.db_path), dd.photos) as queue:
            await queue.enqueue(NewJob(
                platform="telegram", chat_id=str(CHAT), user_id=str(CHAT), photo=PHOTO.read_bytes(),
                prompts=["walk", "run"], settings={"seed": 3, "preset": "tiny", "num_inference_steps": 1}), Limits())

    asyncio.run(enqueue())


@pytest.fixture(scope="module")
def children(tmp_path_factory) -> dict[str, Child]:
    """A child process per crash point, started together: their start-up (imports, building the tiny
    models) runs on one thread each, so two cores overlap them. The stitch child is a
    `svibot worker --once` on a job already paused with both segments recorded (made here, on this
    process's warm models), so it loads no models; the Telegram story for the delivery case is made
    here too, while the children run."""
    root = tmp_path_factory.mktemp("kill9")
    procs = {}

    def start(point: str, argv: list[str]) -> None:
        with open(root / point / "stderr", "w") as err:
            procs[point] = subprocess.Popen([sys.executable, "-m", "svibot.cli", *argv], cwd=REPO,
                                            env=child_env(point, root / point / "mark"),
                                            stdout=subprocess.DEVNULL, stderr=err)

    for point in [*WORKER_POINTS, "telegram"]:
        (root / point).mkdir()
    for point in ("segment-files", "segment-row"):
        start(point, story_argv(root / point / "data"))
    with pytest.MonkeyPatch.context() as m:
        DiskFault("file", "story.mp4").install(m)
        assert main(story_argv(root / "stitch" / "data")) == 1
    start("stitch", worker_once_argv(root / "stitch" / "data"))
    enqueue_telegram_story(root / "telegram" / "data")
    assert main(worker_once_argv(root / "telegram" / "data")) == 0
    done = {"telegram": Child(root / "telegram" / "data", root / "telegram" / "mark", 0, "")}
    for point, proc in procs.items():
        done[point] = Child(root / point / "data", root / point / "mark", proc.wait(timeout=600),
                            (root / point / "stderr").read_text(errors="replace"))
    return done


@pytest.mark.parametrize("point", list(WORKER_POINTS))
def test_kill_9_at_a_step_boundary_resumes_to_the_same_story(point, children, capsys, reference):
    child = children[point]
    data = child.data
    rows_left, temp_left = WORKER_POINTS[point]
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert child.mark.read_text() == point  # it died at this boundary, not anywhere else

    db = DataDir(data).db_path
    assert integrity(db) == "ok"
    (job_id, state, attempts), = job_rows(db)
    assert (state, attempts) == ("running", 0)  # the dead worker's lease, not yet noticed
    segments = segment_rows(db, job_id)
    assert [idx for idx, _, _ in segments] == list(range(rows_left))
    assert segment_events(db) == list(range(rows_left))  # a row and its event commit together
    for idx, video, carry in segments:  # every recorded file is whole
        assert video_ok(data / video, 13 if idx == 0 else 8) and load_carry(data / carry) is not None
    assert not DataDir(data).story_video(job_id).exists()
    left = half_written(data)
    if temp_left:
        assert [p.name.startswith(".story.mp4.") for p in left] == [True], left
    else:
        assert left == []
    first_mtime = DataDir(data).segment_video(job_id, 0).stat().st_mtime_ns

    assert main(worker_once_argv(data)) == 0  # a worker on this host takes the dead one's job at once
    capsys.readouterr()
    (_, state, attempts), = job_rows(db)
    assert (state, attempts) == ("done", 1)
    assert integrity(db) == "ok" and half_written(data) == []
    assert DataDir(data).segment_video(job_id, 0).stat().st_mtime_ns == first_mtime  # not made again
    assert segment_events(db) == [0, 1]  # each segment announced exactly once
    assert event_kinds(db).count("done") == 1
    np.testing.assert_array_equal(final_frames(data), reference)


def pending(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT kind, payload FROM events WHERE platform = 'telegram' AND delivered_at IS NULL "
                            "ORDER BY id").fetchall()


async def serve(fake: FakeTelegram, data: Path, point: str | None, mark: Path) -> asyncio.subprocess.Process:
    env = child_env(point, mark, {**os.environ, "TELEGRAM_BOT_TOKEN": fake.token,
                                  "TELEGRAM_API_BASE_URL": fake.base_url, "SVIBOT_DATA_DIR": str(data)})
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "svibot.cli", "--log-level", "WARNING", "serve", "--telegram", "--no-worker",
        cwd=REPO, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


async def test_kill_9_between_upload_and_mark_resends_only_that_video(children, tmp_path, reference):
    made = children["telegram"]
    assert made.returncode == 0, made.stderr[-3000:]
    data, mark = made.data, tmp_path / "mark"
    db = DataDir(data).db_path
    async with FakeTelegram() as fake:
        bot = await serve(fake, data, "delivery", mark)
        _, err = await asyncio.wait_for(bot.communicate(), timeout=120)
        assert bot.returncode == -signal.SIGKILL, err.decode()[-3000:]
        assert mark.read_text() == "delivery"
        assert integrity(db) == "ok"
        assert [v.text for v in fake.sent_to(CHAT, "sendVideo")] == ["Segment 1/2: walk", "Segment 2/2: run"]
        # Telegram has segment 2, but the queue never heard: its event is still pending.
        assert [kind for kind, payload in pending(db)][:2] == ["segment", "done"]
        assert '"index": 1' in pending(db)[0][1]

        bot = await serve(fake, data, None, mark)
        try:
            await fake.wait_for(lambda: not pending(db) and len(fake.sent_to(CHAT, "sendVideo")) >= 4,
                                timeout=120, what="the rest of the story delivered")
        finally:
            bot.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(bot.communicate(), timeout=60)
    assert bot.returncode == 0, err.decode()[-3000:]
    videos = fake.sent_to(CHAT, "sendVideo")
    captions = [v.text for v in videos]
    # At least once: the one upload in flight at the kill is sent again, nothing else twice, nothing lost.
    assert captions[:3] == ["Segment 1/2: walk", "Segment 2/2: run", "Segment 2/2: run"], captions
    assert len(captions) == 4 and captions[3].startswith("Your story (2 segments")
    assert videos[1].data == videos[2].data
    assert len(fake.sent_to(CHAT, "sendMessage")) == 1  # one status message, edited, never posted again
    story = tmp_path / "delivered.mp4"
    story.write_bytes(videos[3].data)
    np.testing.assert_array_equal(read_frames(story), reference)
