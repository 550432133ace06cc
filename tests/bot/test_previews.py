"""Live previews through the real PTB and discord.py clients against the fake APIs.

The scripted worker puts a distinct JPEG in every progress event (as SVIBOT_PREVIEW=on does);
the outbox shows only the newest one per status edit, so previews are throttled like the status.
"""
from __future__ import annotations

import asyncio
import io
from pathlib import Path

from PIL import Image
from telegram import Bot, InputMediaPhoto
from telegram.error import BadRequest

from engine.models.config import EngineConfig
from engine.worker import Worker, WorkerConfig
from tests.fakes.scripted_worker import ScriptedWorker, preview_colour, preview_jpeg

from .conftest import png_bytes, recorded_job
from .test_discord import bot_config, fake, photo_bytes, reply_of, running_bot, send_story, status_message  # noqa: F401

CHAT = USER = 1001
REPO = Path(__file__).resolve().parents[2]


def _close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 6) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def _which(jpeg: bytes, num_segments: int, num_steps: int) -> tuple[int, int]:
    """The (segment, step) whose preview this image is."""
    colour = preview_colour(jpeg)
    hits = [(s, k) for s in range(num_segments) for k in range(1, num_steps + 1)
            if _close(colour, preview_colour(preview_jpeg(s, k)))]
    assert len(hits) == 1, (colour, hits)
    return hits[0]


async def _story_with_previews(fake, start_bot, queue, data_dir, *, previews: bool) -> int:
    await start_bot()
    fake.user_message(CHAT, USER, caption="/story a | b | c", photo=png_bytes())
    reply = (await fake.wait_for(lambda: fake.sent_to(CHAT, "sendMessage"), what="the queued reply"))[0]
    await recorded_job(queue, 1)  # edits go to the status message, once the bot has stored its id
    worker = ScriptedWorker(queue, data_dir, num_steps=6, step_delay_s=0.06, previews=previews)
    await worker.run_job()
    await fake.wait_for(lambda: "done" in (fake.current_text(CHAT, reply.message_id) or ""), what="done status")
    return reply.message_id


async def test_telegram_previews_one_photo_edited_in_place_and_throttled(fake_telegram, start_bot, queue, data_dir):
    fake = fake_telegram
    status_id = await _story_with_previews(fake, start_bot, queue, data_dir, previews=True)

    photos = fake.sent_to(CHAT, "sendPhoto")
    assert len(photos) == 1  # one preview message for the whole job
    preview_id = photos[0].message_id
    assert photos[0].params["reply_parameters"]["message_id"] == status_id  # it sits under the status
    assert photos[0].text == "Job #1: live preview (rough colours, from the step in progress)"
    assert {e.message_id for e in fake.media_edits} == {preview_id}  # later previews replace its image
    assert len(fake.media_edits) >= 2

    shown = [photos[0].data] + [e.data for e in fake.media_edits]
    order = [_which(jpeg, 3, 6) for jpeg in shown]
    assert order == sorted(order) and len(set(order)) == len(order)  # newer each time, never repeated
    assert len(shown) < 3 * 6  # throttled: 18 previews were made, fewer were sent
    times = [photos[0].at] + [e.at for e in fake.media_edits]
    assert min(b - a for a, b in zip(times, times[1:])) >= 0.2 * 0.9  # the bot's edit interval
    assert fake.photo_data[(CHAT, preview_id)] == shown[-1]
    assert {e.message_id for e in fake.edits} == {status_id}  # the status text stays its own message


async def test_telegram_previews_off_sends_no_photo(fake_telegram, start_bot, queue, data_dir):
    fake = fake_telegram
    await _story_with_previews(fake, start_bot, queue, data_dir, previews=False)
    assert fake.sent_to(CHAT, "sendPhoto") == [] and fake.media_edits == []
    assert fake.method_calls("editMessageMedia") == []


async def test_fake_telegram_refuses_media_edit_of_a_text_message(fake_telegram, start_bot):
    """The status message is text: editMessageMedia on it fails as on the real Bot API."""
    runner = await start_bot()
    async with Bot(runner.config.token, base_url=runner.config.bot_url) as app_bot:
        message = await app_bot.send_message(CHAT, "status")
        try:
            await app_bot.edit_message_media(InputMediaPhoto(preview_jpeg(0, 1)), chat_id=CHAT,
                                             message_id=message.message_id)
        except BadRequest as err:
            assert "no media" in str(err)
        else:
            raise AssertionError("a text message took a photo")


async def test_discord_preview_replaces_the_status_attachment(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        await reply_of(fake, await send_story(fake, "walk | run", image=photo_bytes()))
        await fake.wait_for(lambda: status_message(fake, 1) is not None)
        worker = ScriptedWorker(queue, data_dir, num_steps=6, step_delay_s=0.06, previews=True)
        await worker.run_job()
        await fake.wait_for(lambda: status_message(fake, 1).content.startswith("Job #1: done"))
    status = status_message(fake, 1)
    shown = [u for u in status.history if u.filename.endswith(".jpg")]
    assert len(shown) >= 2 and len(shown) < 2 * 6  # each edit carries the newest preview only
    order = [_which(u.data, 2, 6) for u in shown]
    assert order == sorted(order) and len(set(order)) == len(order)
    assert [u.data for u in status.uploads] == [shown[-1].data]  # each edit replaced the last image
    assert all(u.filename == "SPOILER_preview_1.jpg" for u in shown)  # results' spoiler rule applies
    videos = [m for m in fake.channel_messages() if m.id != status.id and m.uploads]
    assert len(videos) == 3  # two segments and the story, as without previews


async def test_discord_previews_off_leave_the_status_without_attachment(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        await reply_of(fake, await send_story(fake, "walk | run", image=photo_bytes()))
        await fake.wait_for(lambda: status_message(fake, 1) is not None)
        await ScriptedWorker(queue, data_dir, num_steps=3, previews=False).run_job()
        await fake.wait_for(lambda: status_message(fake, 1).content.startswith("Job #1: done"))
    assert status_message(fake, 1).history == []


async def test_tiny_worker_previews_reach_telegram(fake_telegram, start_bot, queue, data_dir):
    """The real engine on the tiny preset with previews on: its strips arrive as one photo edited in place."""
    fake = fake_telegram
    await start_bot()
    stop = asyncio.Event()
    worker = Worker(queue, WorkerConfig(
        data_dir=data_dir, engine=EngineConfig(preset="tiny", models_dir=data_dir.models), poll_s=0.05,
        heartbeat_s=0.5, progress_interval_s=0.0, previews=True))
    task = asyncio.create_task(worker.run(stop))
    try:
        fake.user_message(CHAT, USER, caption="/story a cat walks",
                          photo=(REPO / "examples" / "chelsea.jpg").read_bytes())
        await fake.wait_for(lambda: len(fake.sent_to(CHAT, "sendVideo")) == 2, timeout=60, what="the story")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    photos = fake.sent_to(CHAT, "sendPhoto")
    assert len(photos) == 1
    images = [Image.open(io.BytesIO(d)) for d in [photos[0].data] + [e.data for e in fake.media_edits]]
    assert all(i.format == "JPEG" and i.height == 96 for i in images)  # engine.preview.PREVIEW_HEIGHT
