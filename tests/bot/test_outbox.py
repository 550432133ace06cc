"""The platform-neutral outbox against a recording deliverer and the real queue, on both backends
(SQLite, and PostgreSQL where the videos come out of the database)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.outbox import STATUS_REPLY_META, Outbox, OutboxConfig, RetryLater, Undeliverable
from storage import JobQueue, Limits, NewJob, QueueConfig
from storage.models import Job

from .conftest import png_bytes


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request) -> str | None:
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else None


@pytest.fixture
async def queue(data_dir, database_url):
    q = await JobQueue.open(QueueConfig(db_path=data_dir.db_path, database_url=database_url), data_dir.photos)
    yield q
    await q.close()


class RecordingDeliverer:
    platform = "telegram"

    def __init__(self, upload_limit: int = 50 * 1024 * 1024) -> None:
        self.calls: list[tuple] = []
        self.limit = upload_limit
        self.fail: dict[str, list[Exception]] = {}
        self._ids = iter(range(500, 10_000))

    def upload_limit(self, job: Job) -> int:
        return self.limit

    def _maybe_fail(self, name: str) -> None:
        if self.fail.get(name):
            raise self.fail[name].pop(0)

    async def show_status(self, job: Job, text: str, *, active: bool) -> str:
        self._maybe_fail("status")
        self.calls.append(("status", job.id, text, active))
        return job.status_message_id or str(next(self._ids))

    async def send_video(self, job: Job, path: Path, caption: str) -> str:
        self._maybe_fail("video")
        self.calls.append(("video", job.id, caption, path.stat().st_size))
        return str(next(self._ids))

    async def send_text(self, job: Job, text: str) -> str:
        self._maybe_fail("text")
        self.calls.append(("text", job.id, text))
        return str(next(self._ids))

    def of(self, kind: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == kind]


async def _job(queue, prompts=("a", "b"), meta=None) -> Job:
    return await queue.enqueue(NewJob(platform="telegram", chat_id="7", user_id="7", photo=png_bytes(),
                                      prompts=list(prompts), settings={"seed": 1}, meta=meta or {}), Limits())


def _outbox(queue, deliverer, **config) -> Outbox:
    return Outbox(queue, deliverer, OutboxConfig(**{"edit_interval_s": 0.0, **config}))


async def test_progress_is_coalesced_to_the_newest_and_older_ones_are_marked(queue, worker):
    job = await _job(queue)
    await queue.set_status_message(job.id, "42")
    claimed = await worker.claim()
    worker.num_steps = 5
    await worker.progress(claimed, 0)
    d = RecordingDeliverer()
    assert await _outbox(queue, d).deliver_once() == 5
    assert [c[2].splitlines()[-1] for c in d.of("status")] == ["segment 1/2, step 5/5, ETA ~1 min"]
    assert await queue.pending_events("telegram") == []


async def test_segments_and_story_are_sent_once_in_order_with_captions(queue, worker):
    job = await _job(queue)
    await queue.set_status_message(job.id, "42")
    await worker.run_job()
    d = RecordingDeliverer()
    box = _outbox(queue, d)
    await box.deliver_once()
    assert [c[2] for c in d.of("video")] == ["Segment 1/2: a", "Segment 2/2: b", "Your story (2 segments, 1 s)"]
    assert d.of("status")[-1][2].startswith(f"Job #{job.id}: done") and d.of("status")[-1][3] is False
    assert await box.deliver_once() == 0  # nothing is sent twice
    assert len(d.of("video")) == 3
    events = {e.kind: e for e in await queue.events_for_job(job.id)}
    assert events["done"].message_id == "502"  # the platform id of the story video


async def test_retry_later_leaves_the_event_pending_and_a_partial_event_is_not_resent(queue, worker):
    job = await _job(queue, prompts=["a"])
    await queue.set_status_message(job.id, "42")
    await worker.run_job()
    d = RecordingDeliverer()
    box = _outbox(queue, d)
    d.fail["video"] = [RetryLater(0.01)]
    with pytest.raises(RetryLater):
        await box.deliver_once()
    assert d.of("video") == []
    # The story video goes out, then the status edit hits a flood wait: the video must not repeat.
    d.fail["status"] = [RetryLater(0.01)]
    with pytest.raises(RetryLater):
        await box.deliver_once()
    await box.deliver_once()
    assert [c[2] for c in d.of("video")] == ["Segment 1/1: a", "Your story (1 segment, 1 s)"]
    assert await queue.pending_events("telegram") == []


async def test_undeliverable_is_dropped_and_other_errors_retry_in_order(queue, worker):
    job = await _job(queue)
    await queue.set_status_message(job.id, "42")
    claimed = await worker.claim()
    await worker.segment(claimed, 0)
    await worker.segment(claimed, 1)
    d = RecordingDeliverer()
    box = _outbox(queue, d)
    d.fail["video"] = [RuntimeError("socket closed")]
    await box.deliver_once()
    assert d.of("video") == []  # segment 2 waits for segment 1
    await box.deliver_once()
    assert [c[2] for c in d.of("video")] == ["Segment 1/2: a", "Segment 2/2: b"]
    await worker.complete(claimed)
    d.fail["video"] = [Undeliverable("bot was blocked by the user")]
    await box.deliver_once()
    assert await queue.pending_events("telegram") == []


async def test_status_edits_wait_for_the_interval_and_for_the_adapters_status_message(queue, worker):
    job = await _job(queue, meta={STATUS_REPLY_META: True})
    claimed = await worker.claim()
    d = RecordingDeliverer()
    box = _outbox(queue, d, edit_interval_s=10.0)
    await worker.progress(claimed, 0)
    await box.deliver_once()
    assert d.of("status") == []  # the adapter has not recorded its "Queued" reply yet
    await queue.set_status_message(job.id, "42")
    await box.deliver_once()
    assert len(d.of("status")) == 1
    await worker.progress(claimed, 1)
    await box.deliver_once()
    assert len(d.of("status")) == 1  # within the interval: left pending, not dropped
    assert len(await queue.pending_events("telegram")) == 1


async def test_status_message_is_created_when_the_job_has_none(queue, worker):
    job = await _job(queue)  # e.g. queued from the CLI: no adapter reply to edit
    claimed = await worker.claim()
    await worker.progress(claimed, 0)
    d = RecordingDeliverer()
    await _outbox(queue, d).deliver_once()
    assert (await queue.get_job(job.id)).status_message_id == "500"


async def test_video_over_the_upload_limit_is_reencoded_or_refused(queue, worker):
    job = await _job(queue, prompts=["a"])
    await queue.set_status_message(job.id, "42")
    worker.frames_per_segment = 48
    await worker.run_job()
    d = RecordingDeliverer(upload_limit=200)  # no mp4 fits in 200 bytes
    await _outbox(queue, d).deliver_once()
    assert d.of("video") == []
    refusals = [c[2] for c in d.of("text")]
    assert len(refusals) == 2 and all("over the" in t and "fewer segments" in t for t in refusals)
    assert await queue.pending_events("telegram") == []


async def test_run_stops_when_asked(queue):
    d = RecordingDeliverer()
    stop = asyncio.Event()
    task = asyncio.create_task(_outbox(queue, d, poll_interval_s=0.01).run(stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, timeout=2)
