"""The shared bot parts: access rules, texts, media (their config is built by svibot.config)."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from bot import access, intake, media, texts
from bot.config import BotConfig
from storage import Limits, NewJob
from tests.fakes.scripted_worker import count_frames

from .conftest import png_bytes


# -- access ---------------------------------------------------------------------------------------
def test_allowlists_and_admins():
    cfg = BotConfig(allowed_users=frozenset({"1"}), allowed_chats=frozenset({"-5"}), admins=frozenset({"9"}))
    access.check_allowed(cfg, "1", "-5")
    access.check_allowed(cfg, 9, "-777")  # admins are always allowed
    with pytest.raises(access.NotAuthorized, match="private"):
        access.check_allowed(cfg, "2", "-5")
    with pytest.raises(access.NotAuthorized, match="not enabled in this chat"):
        access.check_allowed(cfg, "1", "-6")
    access.check_allowed(cfg, "1", ["-6", "-5"])  # e.g. a channel in an allowed guild
    with pytest.raises(access.AdminsOnly):
        access.check_admin(cfg, "1")


def test_day_start_is_midnight_utc():
    now = datetime(2026, 3, 4, 17, 30, tzinfo=timezone.utc).timestamp()
    assert access.day_start(now) == datetime(2026, 3, 4, tzinfo=timezone.utc).timestamp()


async def test_limits_name_the_rule_and_the_reset(queue):
    cfg = BotConfig(max_active_jobs=1, stories_per_day=2, admins=frozenset({"9"}))
    job = await queue.enqueue(NewJob(platform="telegram", chat_id="1", user_id="1", photo=png_bytes(),
                                     prompts=["a"]), Limits())
    with pytest.raises(access.ActiveJobLimit, match=r"1 active job \(#1\); the limit is 1 per user"):
        await access.check_limits(cfg, queue, "telegram", "1")
    await access.check_limits(cfg, queue, "discord", "1")  # limits are per platform account
    await access.check_limits(cfg, queue, "telegram", "9")  # admins are not limited
    await queue.cancel(job.id)
    await queue.enqueue(NewJob(platform="telegram", chat_id="1", user_id="1", photo=png_bytes(), prompts=["b"]),
                        Limits())
    await queue.cancel(2)
    with pytest.raises(access.DailyLimit, match="limit is 2 per day. It resets at 00:00 UTC") as err:
        await access.check_limits(cfg, queue, "telegram", "1")
    assert err.value.resets_at == access.day_start(err.value.resets_at - 1) + 86400


async def test_start_story_checks_before_queueing_and_sets_a_seed(queue):
    cfg = BotConfig(limits=Limits(max_segments=2))
    request = intake.StoryRequest(platform="telegram", chat_id="1", user_id="1", text="a | b | c", photo=png_bytes())
    with pytest.raises(Exception, match="3 segments; the limit is 2"):
        await intake.start_story(queue, cfg, request)
    queued = await intake.start_story(queue, cfg, intake.StoryRequest(
        platform="telegram", chat_id="1", user_id="1", text=" a |b ", photo=png_bytes(), seed=77))
    assert queued.job.prompts == ["a", "b"] and queued.job.settings == {"seed": 77}
    assert queued.position == 1 and queued.workers_online == 0
    assert str(queued.text).startswith("Queued: job #1, position 1, ETA unknown")
    assert len(await queue.list_jobs()) == 1


async def test_queued_reply_says_when_no_gpu_worker_is_online(queue):
    from storage import WorkerId

    request = intake.StoryRequest(platform="telegram", chat_id="1", user_id="1", text="walk", photo=png_bytes())
    cfg = BotConfig(max_active_jobs=5)
    alone = await intake.start_story(queue, cfg, request)
    assert "No GPU worker is online right now; your job is queued" in str(alone.text)
    await queue.worker_seen(WorkerId.current(), "tiny")
    served = await intake.start_story(queue, cfg, request)
    assert served.workers_online == 1 and "No GPU worker" not in str(served.text)
    assert [j.state for j in await queue.list_jobs()] == ["queued", "queued"]


async def test_full_disk_refuses_the_story_clearly_and_queues_nothing(queue, data_dir, monkeypatch):
    import errno

    import storage.files

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.files.os, "replace", no_space)
    request = intake.StoryRequest(platform="telegram", chat_id="1", user_id="1", text="a | b",
                                  photo=png_bytes((90, 70)))
    with pytest.raises(intake.NotQueued, match="disk is full"):
        await intake.start_story(queue, BotConfig(), request)
    monkeypatch.undo()
    assert await queue.list_jobs() == []
    assert not any(p.is_file() for p in data_dir.photos.rglob("*"))  # no half-written photo


# -- texts ----------------------------------------------------------------------------------------
def test_texts_carry_the_numbers_users_need():
    assert str(texts.segment_caption(0, 3, "walk")) == "Segment 1/3: walk"
    assert str(texts.story_caption(3, 15.2)) == "Your story (3 segments, 15 s)"
    assert str(texts.story_caption(1, 5.0)) == "Your story (1 segment, 5 s)"
    assert str(texts.queued_text(4, 2, 300, 1)) == "Queued: job #4, position 2, ETA ~5 min"
    progress = str(texts.progress_text(4, 1, 2, 5, 10))
    assert "segment 2/2, step 5/10" in progress and "[########--] 75%" in progress
    assert "use only photos you have the right to use" in str(texts.help_text(
        Limits(), queue_length=0, workers_online=0)).lower()


# -- media ----------------------------------------------------------------------------------------
def _noisy_mp4(path: Path, num_frames: int = 32) -> Path:
    """Random noise compresses badly, so even a short clip is big enough to need re-encoding."""
    writer = imageio_ffmpeg.write_frames(str(path), (128, 128), fps=16, quality=10, ffmpeg_log_level="error")
    writer.send(None)
    rng = np.random.default_rng(0)
    for _ in range(num_frames):
        writer.send(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8).tobytes())  # (H, W, C)
    writer.close()
    return path


async def test_fit_video_reencodes_under_the_limit_or_gives_up(tmp_path):
    src = _noisy_mp4(tmp_path / "big.mp4")
    size = src.stat().st_size
    assert await media.fit_video(src, size) == src  # already fits: untouched
    fitted = await media.fit_video(src, size // 2)
    assert fitted is not None and fitted != src and fitted.stat().st_size <= size // 2
    assert count_frames(fitted) == 32
    assert await media.fit_video(src, 2_000) is None  # would need < MIN_KBPS
    with pytest.raises(ValueError, match="duration_s is 0"):
        media.target_kbps(1000, 0)
