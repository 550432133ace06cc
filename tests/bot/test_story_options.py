"""`loop` and `color_match` through both bots: the real PTB and discord.py clients against the fakes on 127.0.0.1.

Options are stored in the job's settings (re-rolls keep them); a bad value gets a clear answer and nothing is
queued. The last tests run a looping story on the real tiny worker through each bot.
"""
from __future__ import annotations

import asyncio
import typing
from pathlib import Path

from bot.config import BotConfig
from bot.discord_app import story as discord_story
from engine.models.config import EngineConfig
from engine.worker import Worker, WorkerConfig
from storage.options import COLOR_MATCH_MODES
from tests.bot.test_discord import (  # noqa: F401  (fixtures)
    OWNER,
    bot_config,
    decoded_frames,
    fake,
    photo_bytes,
    reply_of,
    running_bot,
    status_message,
)
from tests.fakes.scripted_worker import count_frames

from .conftest import png_bytes

CHAT = USER = 1001
PHOTO = Path(__file__).resolve().parents[2] / "examples" / "chelsea.jpg"
TINY_LOOP_FRAMES = 13 + (13 - 5) - 4  # two tiny svi-pro segments; the loop drops the 4 frames repeating the photo


def tiny_worker(queue, data_dir) -> Worker:
    return Worker(queue, WorkerConfig(data_dir=data_dir, engine=EngineConfig(preset="tiny", models_dir=data_dir.models),
                                      poll_s=0.05, heartbeat_s=0.5, progress_interval_s=0.0))


# -- Telegram ----------------------------------------------------------------------------------------
async def test_telegram_options_are_stored_and_kept_by_a_reroll(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot()
    fake.user_message(CHAT, USER, caption="/story loop:0.8 color:anchor walk | run", photo=png_bytes())
    status = (await fake.wait_for(lambda: fake.sent_to(CHAT, "sendMessage"), what="queued reply"))[0]
    assert status.text.startswith("Queued: job #1")
    job = await queue.get_job(1)
    assert job.prompts == ["walk", "run"]
    assert {k: job.settings[k] for k in ("loop", "loop_strength", "color_match")} == {
        "loop": True, "loop_strength": 0.8, "color_match": "anchor"}

    await queue.cancel(1)  # one active job per user: make room for the re-roll
    fake.press_button(CHAT, USER, status.message_id, "reroll:1")
    await fake.wait_for(lambda: fake.callback_answers, what="answer to the re-roll")
    assert fake.callback_answers[0]["text"] == "Queued job #2."
    new = await queue.get_job(2)
    assert new.prompts == ["walk", "run"] and new.settings["seed"] != job.settings["seed"]
    assert {k: v for k, v in new.settings.items() if k != "seed"} == {k: v for k, v in job.settings.items()
                                                                      if k != "seed"}


async def test_telegram_bad_option_is_answered_and_nothing_is_queued(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot()
    fake.user_message(CHAT, USER, caption="/story loop:maybe walk | run", photo=png_bytes())
    reply = (await fake.wait_for(lambda: fake.texts_to(CHAT), what="the refusal"))[0]
    assert reply.startswith("loop:maybe is not a loop setting; write loop: to end the story on its first frame")
    fake.user_message(CHAT, USER, caption="/story color:sepia walk", photo=png_bytes())
    reply = (await fake.wait_for(lambda: fake.texts_to(CHAT)[1:], what="the second refusal"))[0]
    assert reply.startswith("color:sepia is not a colour match mode; use color:anchor")
    assert await queue.list_jobs() == []
    assert fake.method_calls("getFile") == []  # refused before the photo was downloaded


async def test_telegram_help_explains_loop_and_colour_match(fake_telegram, start_bot):
    fake = fake_telegram
    await start_bot()
    fake.user_message(CHAT, USER, text="/help")
    text = (await fake.wait_for(lambda: fake.texts_to(CHAT), what="help"))[0]
    assert "/story loop: color:anchor walk | run | fly" in text
    assert "plays seamlessly on repeat" in text and "Only the last segment changes" in text
    assert "color:anchor keeps every later segment on the photo's colours" in text


async def test_telegram_loop_story_on_the_tiny_worker(fake_telegram, start_bot, queue, data_dir, tmp_path):
    fake = fake_telegram
    await start_bot()
    stop = asyncio.Event()
    worker_task = asyncio.create_task(tiny_worker(queue, data_dir).run(stop))
    try:
        fake.user_message(CHAT, USER, caption="/story loop: a cat walks | the cat sits", photo=PHOTO.read_bytes())
        await fake.wait_for(lambda: len(fake.sent_to(CHAT, "sendVideo")) == 3, timeout=60, what="the story")
    finally:
        stop.set()
        await asyncio.wait_for(worker_task, timeout=30)
    story = fake.sent_to(CHAT, "sendVideo")[2]
    path = tmp_path / "loop.mp4"
    path.write_bytes(story.data)
    assert count_frames(path) == TINY_LOOP_FRAMES
    assert (await queue.get_job(1)).settings["loop"] is True


async def test_text_options_win_over_settings_defaults_and_parameters_win_over_both(queue):
    from bot import intake

    await queue.set_user_setting("telegram", "1", "loop", True)
    await queue.set_user_setting("telegram", "1", "color_match", "anchor")
    config = BotConfig(max_active_jobs=5)

    async def settings_of(text: str, **settings) -> dict:
        queued = await intake.start_story(queue, config, intake.StoryRequest(
            platform="telegram", chat_id="1", user_id="1", text=text, photo=png_bytes(), settings=settings))
        return {k: v for k, v in queued.job.settings.items() if k != "seed"}

    assert await settings_of("walk") == {"loop": True, "color_match": "anchor"}  # the user's /settings
    assert await settings_of("loop:off walk") == {"loop": False, "color_match": "anchor"}
    assert await settings_of("loop:off color:off walk", loop=True) == {"loop": True, "color_match": "off"}


# -- Discord -----------------------------------------------------------------------------------------
async def send(fake, prompts: str, **options) -> dict:
    attachments = {"image": fake.add_attachment("cat.png", photo_bytes(), "image/png")}
    return await fake.send_interaction(fake.slash("story", OWNER, {"prompts": prompts, "image": None, **options},
                                                  attachments=attachments))


def test_discord_color_match_choices_are_the_engine_modes():
    hints = typing.get_type_hints(discord_story)
    (literal, _none) = typing.get_args(hints["color_match"])
    assert typing.get_args(literal) == COLOR_MATCH_MODES


async def test_discord_loop_and_color_match_parameters_are_stored(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        assert (await reply_of(fake, await send(fake, "walk | run", loop=True, color_match="anchor"))).startswith(
            "Queued: job #1")
        # the text options work in Discord too; the parameters win over them
        assert (await reply_of(fake, await send(fake, "loop:0.5 color:anchor fly", color_match="off"))).startswith(
            "Queued: job #2")
    first, second = await queue.get_job(1), await queue.get_job(2)
    assert first.prompts == ["walk", "run"] and first.settings["loop"] is True
    assert first.settings["color_match"] == "anchor" and "loop_strength" not in first.settings
    assert second.prompts == ["fly"] and second.settings["loop_strength"] == 0.5
    assert second.settings["color_match"] == "off"
    story = next(c for c in fake.commands["global"] if c["name"] == "story")
    options = {o["name"]: o for o in story["options"]}
    assert options["loop"]["type"] == 5 and not options["loop"].get("required", False)
    assert [c["value"] for c in options["color_match"]["choices"]] == list(COLOR_MATCH_MODES)


async def test_discord_bad_option_values_are_answered_and_nothing_is_queued(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        sepia = await reply_of(fake, await send(fake, "walk", color_match="sepia"))  # a client sending its own value
        maybe = await reply_of(fake, await send(fake, "walk", loop="maybe"))
        text = await reply_of(fake, await send(fake, "loop:1.5 walk"))
    assert sepia == "color_match must be one of off, anchor but is 'sepia'"
    assert maybe == "loop must be true or false but is 'maybe'"
    assert text.startswith("loop:1.5: the loop strength must be above 0 and at most 1")
    assert await queue.list_jobs() == []
    assert not fake.channel_messages()


async def test_discord_help_explains_the_options(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        text = await reply_of(fake, await fake.send_interaction(fake.slash("help", OWNER)))
    assert "Options: loop:True, color_match:anchor" in text and "plays seamlessly on repeat" in text


async def test_discord_loop_story_on_the_tiny_worker(fake, queue, data_dir, tmp_path):
    stop = asyncio.Event()
    async with running_bot(fake, queue, data_dir, BotConfig(poll_interval_s=0.05)):
        worker_task = asyncio.create_task(tiny_worker(queue, data_dir).run(stop))
        try:
            attachments = {"image": fake.add_attachment("chelsea.jpg", PHOTO.read_bytes(), "image/jpeg")}
            interaction = await fake.send_interaction(fake.slash(
                "story", OWNER, {"prompts": "a cat walks | the cat sits", "image": None, "loop": True},
                attachments=attachments))
            assert (await reply_of(fake, interaction)).startswith("Queued: job #1")
            await fake.wait_for(lambda: len([m for m in fake.channel_messages() if m.uploads]) == 3
                                and status_message(fake, 1).content.startswith("Job #1: done"), timeout=90)
        finally:
            stop.set()
            await asyncio.wait_for(worker_task, timeout=30)
    story = [m for m in fake.channel_messages() if m.uploads][2]
    assert story.content.startswith("Your story (2 segments, ")
    assert decoded_frames(story.uploads[0].data, tmp_path) == TINY_LOOP_FRAMES
