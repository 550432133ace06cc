"""The Discord bot with the real worker on the tiny preset: one /story in, every segment and the story out."""
from __future__ import annotations

import asyncio
from pathlib import Path

from engine.models.config import EngineConfig
from engine.worker import Worker, WorkerConfig
from tests.bot.test_discord import (  # noqa: F401  (fixtures)
    bot_config,
    decoded_frames,
    fake,
    reply_of,
    running_bot,
    send_story,
    status_message,
)

PHOTO = Path(__file__).resolve().parents[2] / "examples" / "chelsea.jpg"


async def test_real_tiny_worker_delivers_the_whole_story(fake, queue, data_dir, bot_config, tmp_path):
    stop_worker = asyncio.Event()
    engine = EngineConfig(preset="tiny", models_dir=data_dir.models)
    worker = Worker(queue, WorkerConfig(data_dir=data_dir, engine=engine, poll_s=0.05, heartbeat_s=0.5,
                                        progress_interval_s=0.0))
    async with running_bot(fake, queue, data_dir, bot_config):
        worker_task = asyncio.create_task(worker.run(stop_worker))
        try:
            interaction = await send_story(fake, "a cat walks | the cat runs | the cat flies",
                                           image=PHOTO.read_bytes(), filename="chelsea.jpg",
                                           content_type="image/jpeg")
            assert (await reply_of(fake, interaction)).startswith("Queued: job #1")
            await fake.wait_for(lambda: len([m for m in fake.channel_messages() if m.uploads]) == 4
                                and status_message(fake, 1).content.startswith("Job #1: done"), timeout=90)
        finally:
            stop_worker.set()
            await asyncio.wait_for(worker_task, timeout=30)

    videos = [m for m in fake.channel_messages() if m.uploads]
    assert [m.content for m in videos[:3]] == [
        "Segment 1/3: a cat walks", "Segment 2/3: the cat runs", "Segment 3/3: the cat flies"]
    assert videos[3].content.startswith("Your story (3 segments, ")
    frames = [decoded_frames(m.uploads[0].data, tmp_path) for m in videos]
    assert frames[:3] == [s.num_frames for s in await queue.segments(1)]
    assert frames[3] == sum(frames[:3]) and all(f > 0 for f in frames)
    assert fake.rejected_uploads == []
