"""End to end over HTTP: the real PTB Application against the fake Bot API, with a scripted worker."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bot.config import BotConfig
from tests.fakes.scripted_worker import count_frames

from .conftest import png_bytes, recorded_job

CHAT = USER = 1001


def _videos(fake, chat=CHAT):
    return fake.sent_to(chat, "sendVideo")


async def _drained(queue, timeout: float = 10.0) -> None:
    """Wait until the outbox has marked every telegram event delivered."""
    deadline = time.monotonic() + timeout
    while await queue.pending_events("telegram"):
        assert time.monotonic() < deadline, await queue.pending_events("telegram")
        await asyncio.sleep(0.05)


async def _queued_reply(fake, chat=CHAT, index=0):
    """Wait for the chat's index-th "Queued" reply; returns it."""
    return (await fake.wait_for(
        lambda: [s for s in fake.sent_to(chat, "sendMessage") if s.text.startswith("Queued: job #")][index:],
        what="the queued reply"))[0]


async def test_happy_path_captioned_photo_gets_every_segment_and_the_story(
        fake_telegram, start_bot, queue, worker, tmp_path: Path):
    fake = fake_telegram
    await start_bot()
    sent_at = time.monotonic()
    fake.user_message(CHAT, USER, caption="/story a | b | c", photo=png_bytes())

    reply = await _queued_reply(fake)
    assert reply.at - sent_at < 3.0
    assert "Queued: job #1, position 1" in reply.text
    assert "No GPU worker is online" in reply.text  # nothing called worker_seen yet
    buttons = [b["callback_data"] for row in reply.params["reply_markup"]["inline_keyboard"] for b in row]
    assert buttons == ["cancel:1", "reroll:1"]
    job = await recorded_job(queue, 1)
    assert job.prompts == ["a", "b", "c"] and isinstance(job.settings["seed"], int)
    assert job.status_message_id == str(reply.message_id)

    worker.step_delay_s = 0.1
    await worker.run_job()
    await fake.wait_for(lambda: len(_videos(fake)) == 4, what="3 segments and the story")

    videos = _videos(fake)
    assert [v.text for v in videos[:3]] == ["Segment 1/3: a", "Segment 2/3: b", "Segment 3/3: c"]
    assert videos[3].text.startswith("Your story (3 segments, ")
    assert all(v.params.get("supports_streaming") is True for v in videos)
    frames = []
    for i, video in enumerate(videos):
        path = tmp_path / f"got_{i}.mp4"
        path.write_bytes(video.data)
        frames.append(count_frames(path))
    assert frames[:3] == [worker.frames_per_segment] * 3
    assert frames[3] == sum(frames[:3])

    # One status message, edited with progress and finally "done"; never a second status message.
    await fake.wait_for(lambda: "done" in (fake.current_text(CHAT, reply.message_id) or ""), what="done status")
    edits = [e.text for e in fake.edits if e.message_id == reply.message_id]
    assert any("segment 1/3, step" in t for t in edits)
    assert {e.message_id for e in fake.edits} == {reply.message_id}
    assert len([t for t in fake.texts_to(CHAT) if t.startswith("Queued")]) == 1
    final = [e for e in fake.edits if e.message_id == reply.message_id][-1]
    assert [b["text"] for row in final.reply_markup["inline_keyboard"] for b in row] == ["🔁 Re-roll"]
    await _drained(queue)


async def test_input_paths_reply_photo_then_command_and_document_image(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot()
    # Reply "/story" to an earlier photo.
    photo = fake.user_message(CHAT, USER, photo=png_bytes(color="red"))
    fake.user_message(CHAT, USER, text="/story walk | run", reply_to=photo["message_id"])
    await _queued_reply(fake, CHAT)
    # A photo, then "/story" in the next message (addressed to the bot by name).
    fake.user_message(2002, 2002, photo=png_bytes(color="green"))
    fake.user_message(2002, 2002, text="/story@svibot_test fly away")
    await _queued_reply(fake, 2002)
    # A PNG sent as a file, with the caption.
    fake.user_message(3003, 3003, caption="/story swim", document=(png_bytes(color="blue"), "image/png", "cat.png"))
    await _queued_reply(fake, 3003)

    jobs = sorted(await queue.list_jobs(["queued"]), key=lambda j: j.id)
    assert [(j.user_id, j.prompts) for j in jobs] == [
        ("1001", ["walk", "run"]), ("2002", ["fly away"]), ("3003", ["swim"])]
    assert jobs[2].photo_path.endswith(".png")
    assert len({j.photo_sha256 for j in jobs}) == 3  # each job got its own photo


async def test_flood_429_mid_job_gives_exactly_one_copy_of_each_video(fake_telegram, start_bot, queue, worker):
    fake = fake_telegram
    await start_bot()
    fake.user_message(CHAT, USER, caption="/story a | b | c", photo=png_bytes())
    await _queued_reply(fake)
    job = await worker.claim()
    await worker.run_segments(job, range(1))
    await fake.wait_for(lambda: len(_videos(fake)) == 1, what="segment 1")

    fake.fail_next("sendVideo", retry_after=1, times=1)
    fake.fail_next("editMessageText", retry_after=1, times=1)
    await worker.run_segments(job, range(1, 3))
    await worker.complete(job)
    await fake.wait_for(lambda: len(_videos(fake)) == 4, timeout=30, what="all videos after the flood wait")
    await asyncio.sleep(0.5)  # give a duplicate, if any, the chance to arrive

    assert ("sendVideo", 429) in fake.rejected
    captions = [v.text for v in _videos(fake)]
    assert captions[:3] == ["Segment 1/3: a", "Segment 2/3: b", "Segment 3/3: c"]
    assert len(captions) == 4 and captions[3].startswith("Your story")
    await _drained(queue)


async def test_restart_between_segments_loses_nothing_and_duplicates_nothing(
        fake_telegram, start_bot, queue, worker):
    fake = fake_telegram
    runner = await start_bot()
    fake.user_message(CHAT, USER, caption="/story a | b | c", photo=png_bytes())
    reply = await _queued_reply(fake)
    job = await worker.claim()
    await worker.run_segments(job, range(1))
    await fake.wait_for(lambda: len(_videos(fake)) == 1, what="segment 1")

    await runner.stop()
    await worker.run_segments(job, range(1, 3))  # produced while the bot is down
    assert len(_videos(fake)) == 1
    await runner.start()
    await worker.complete(job)
    await fake.wait_for(lambda: len(_videos(fake)) == 4, what="the rest after the restart")
    await asyncio.sleep(0.5)

    captions = [v.text for v in _videos(fake)]
    assert captions[:3] == ["Segment 1/3: a", "Segment 2/3: b", "Segment 3/3: c"]
    assert len(captions) == 4
    # The status message survives the restart: edits keep going to the same message.
    await fake.wait_for(lambda: "done" in (fake.current_text(CHAT, reply.message_id) or ""), what="done status")
    assert {e.message_id for e in fake.edits} == {reply.message_id}
    events = await queue.events_for_job(job.id)
    assert all(e.delivered_at is not None for e in events)
    assert len({e.message_id for e in events if e.kind in ("segment", "done")}) == 4


async def test_status_edits_are_throttled_per_chat(fake_telegram, start_bot, queue, worker):
    fake = fake_telegram
    await start_bot(BotConfig(poll_interval_s=0.02), edit_interval_s=0.5)
    fake.user_message(CHAT, USER, caption="/story a | b", photo=png_bytes())
    await _queued_reply(fake)
    worker.num_steps, worker.step_delay_s = 10, 0.05
    await worker.run_job()
    await fake.wait_for(lambda: len(_videos(fake)) == 3, what="all videos")
    await asyncio.sleep(0.6)
    times = [e.at for e in fake.edits]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) >= 2
    assert min(gaps) >= 0.45  # 20 progress events, but never two edits within the interval


async def test_flood_on_the_queued_reply_still_gives_one_reply(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot()
    fake.fail_next("sendMessage", retry_after=1, times=1)
    fake.user_message(CHAT, USER, caption="/story a", photo=png_bytes())
    reply = await _queued_reply(fake)
    await asyncio.sleep(0.3)
    assert ("sendMessage", 429) in fake.rejected
    assert [t for t in fake.texts_to(CHAT)] == [reply.text]
    assert (await recorded_job(queue, 1)).status_message_id == str(reply.message_id)


async def test_failed_job_is_reported_in_the_chat_and_the_status(fake_telegram, start_bot, queue, worker):
    fake = fake_telegram
    await start_bot()
    fake.user_message(CHAT, USER, caption="/story a | b", photo=png_bytes())
    reply = await _queued_reply(fake)
    job = await worker.claim()
    await queue.fail(job.id, worker.id, "ran out of GPU memory at segment 1 of 2")
    await fake.wait_for(lambda: any("failed" in t for t in fake.texts_to(CHAT)), what="failure message")
    assert fake.texts_to(CHAT)[-1] == "Job #1 failed: ran out of GPU memory at segment 1 of 2"
    await fake.wait_for(lambda: "failed" in (fake.current_text(CHAT, reply.message_id) or ""), what="status")
