"""Usage statistics and refusal records from a seeded queue, on both backends."""
from __future__ import annotations

import pytest

from storage import NewJob, WorkerId
from storage.usage import failure_reason
from tests.storage.conftest import png_bytes

WORKER = WorkerId(owner="test-host:1:w", host="test-host", pid=1)
MIDNIGHT = 1_699_920_000.0  # 2023-11-14 00:00 UTC


def _job(user: str, prompts: int, **settings) -> NewJob:
    return NewJob(platform="telegram", chat_id="c", user_id=user, photo=png_bytes(),
                  prompts=[f"p{i}" for i in range(prompts)], settings={"seed": 1, **settings})


async def _run(q, tmp_path, limits, user: str, gen_seconds: list[float], *, fail: str | None = None,
               prompts: int = 3, finish: bool = True, **settings):
    job = await q.enqueue(_job(user, prompts, **settings), limits)
    assert (await q.claim(WORKER)).id == job.id
    for i, seconds in enumerate(gen_seconds):
        video = tmp_path / f"j{job.id}_{i}.mp4"
        video.write_bytes(b"video")
        await q.record_segment(job.id, WORKER, index=i, prompt=f"p{i}", video_path=video, carry_path=None,
                               num_frames=5, duration_s=1.0, gen_seconds=seconds)
    if fail:
        await q.fail(job.id, WORKER, fail)
    elif finish:
        story = tmp_path / f"j{job.id}.mp4"
        story.write_bytes(b"story")
        await q.complete(job.id, WORKER, story, {})
    return job


async def test_usage_report_from_a_seeded_queue(make_queue, clock, limits, tmp_path):
    q = await make_queue()
    clock.now = MIDNIGHT - 10 * 86400  # outside a 7-day window
    await _run(q, tmp_path, limits, "old", [99.0], prompts=1)
    clock.now = MIDNIGHT - 3600  # yesterday
    await _run(q, tmp_path, limits, "u1", [10.0, 30.0], prompts=2)
    clock.now = MIDNIGHT + 3600  # today
    await _run(q, tmp_path, limits, "u2", [5.0, 7.0, 100.0], quality="quality", preset="tiny")
    await _run(q, tmp_path, limits, "u1", [8.0], fail="ran out of GPU memory at segment 2 of 3; try a smaller preset")
    await _run(q, tmp_path, limits, "u3", [], fail="ran out of GPU memory at segment 1 of 3; try a smaller preset")
    await _run(q, tmp_path, limits, "u3", [], fail="the engine failed at segment 1 of 3: RuntimeError: boom")
    await _run(q, tmp_path, limits, "u2", [], prompts=1, finish=False)  # still running
    waiting = await q.enqueue(_job("u4", 1), limits)
    await q.record_refusal("telegram", "c", "u5", "blocked_word", "gore")
    await q.record_refusal("discord", "c", "u6", "blocked_word", "cafe")

    report = await q.usage_report(days=7, now=MIDNIGHT + 7200)
    assert [d.date for d in report.days] == [f"2023-11-{d:02d}" for d in range(8, 15)]
    assert [(d.stories, d.segments) for d in report.days[-2:]] == [(1, 2), (6, 4)]
    assert sum(d.stories for d in report.days) == 7  # the 10-day-old job is outside the window
    timings = {(t.preset, t.recipe): (t.segments, t.median_s) for t in report.seconds_per_segment}
    assert timings == {("default", "fast"): (3, 10.0), ("tiny", "quality"): (3, 7.0)}
    assert report.failures == (("ran out of GPU memory", 2), ("the engine failed: RuntimeError", 1))
    assert report.refusals == (("blocked_word", 2),)
    assert report.active_users == 4  # u1..u4, not "old"
    assert (report.queued, report.running) == (1, 1)
    assert waiting.state == "queued"
    as_json = report.to_dict()
    assert as_json["failures"] == {"ran out of GPU memory": 2, "the engine failed: RuntimeError": 1}
    assert as_json["days"][-1] == {"date": "2023-11-14", "stories": 6, "segments": 4}

    one_day = await q.usage_report(days=1, now=MIDNIGHT + 7200)
    assert [(d.date, d.stories) for d in one_day.days] == [("2023-11-14", 6)] and one_day.active_users == 4
    with pytest.raises(ValueError, match="days is 0"):
        await q.usage_report(days=0)


def test_failure_reasons_drop_their_particulars():
    assert failure_reason("disk full at segment 3 of 9; the operator needs to free space") == "disk full"
    assert failure_reason(None) == "unknown"
    assert failure_reason("photo is 20000x20000 pixels; the limit is 40 MP") == "photo is 20000x20000 pixels"
