"""The whole path with the real worker on the tiny preset: one captioned photo in, the whole story out."""
from __future__ import annotations

import asyncio
from pathlib import Path

from engine.models.config import EngineConfig
from engine.worker import Worker, WorkerConfig
from tests.fakes.scripted_worker import count_frames

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "examples" / "chelsea.jpg"
CHAT = USER = 1001


async def test_real_tiny_worker_story_arrives_in_order_and_frames_add_up(
        fake_telegram, start_bot, queue, data_dir, tmp_path):
    fake = fake_telegram
    await start_bot()
    stop = asyncio.Event()
    worker = Worker(queue, WorkerConfig(data_dir=data_dir, engine=EngineConfig(preset="tiny", models_dir=data_dir.models),
                                        poll_s=0.05, heartbeat_s=0.5, progress_interval_s=0.0))
    worker_task = asyncio.create_task(worker.run(stop))
    try:
        await fake.wait_for(lambda: fake.method_calls("getUpdates"), what="polling")
        fake.user_message(CHAT, USER, caption="/story a cat walks | the cat runs | the cat flies",
                          photo=PHOTO.read_bytes())
        reply = (await fake.wait_for(lambda: fake.sent_to(CHAT, "sendMessage"), what="queued reply"))[0]
        assert reply.text.startswith("Queued: job #1")
        await fake.wait_for(lambda: len(fake.sent_to(CHAT, "sendVideo")) == 4, timeout=60, what="the story")
    finally:
        stop.set()
        await asyncio.wait_for(worker_task, timeout=30)

    videos = fake.sent_to(CHAT, "sendVideo")
    assert [v.text for v in videos[:3]] == [
        "Segment 1/3: a cat walks", "Segment 2/3: the cat runs", "Segment 3/3: the cat flies"]
    assert videos[3].text.startswith("Your story (3 segments, ")
    frames = []
    for i, video in enumerate(videos):
        path = tmp_path / f"got_{i}.mp4"
        path.write_bytes(video.data)
        frames.append(count_frames(path))
    segments = await queue.segments(1)
    assert frames[:3] == [s.num_frames for s in segments]
    assert frames[3] == sum(frames[:3])
    await fake.wait_for(lambda: "done" in (fake.current_text(CHAT, reply.message_id) or ""), what="done status")
