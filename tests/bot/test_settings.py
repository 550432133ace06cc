"""/settings end to end: buttons change the stored defaults, /story uses them, words win, restarts keep them."""
from __future__ import annotations

import asyncio

from bot.config import BotConfig
from storage import JobQueue, QueueConfig

from .conftest import png_bytes, recorded_job
from .test_discord import bot_config, fake, photo_bytes, reply_of, running_bot, send_story  # noqa: F401

CHAT = USER = 1001
OTHER = 2002


def _buttons(sent) -> list[tuple[str, str]]:
    return [(b["text"], b["callback_data"]) for row in sent["reply_markup"]["inline_keyboard"] for b in row]


async def _settings_message(fake, chat=CHAT):
    return (await fake.wait_for(lambda: [s for s in fake.sent_to(chat, "sendMessage")
                                         if s.text.startswith("Your defaults")], what="the settings"))[-1]


async def _story_job(fake, queue, n: int, caption: str = "/story a | b"):
    fake.user_message(CHAT, USER, caption=caption, photo=png_bytes())
    await fake.wait_for(lambda: len([s for s in fake.sent_to(CHAT, "sendMessage") if s.text.startswith("Queued")]) == n,
                        what=f"queued reply {n}")
    return await queue.get_job(n)


async def test_telegram_buttons_change_defaults_that_stories_use_and_restarts_keep(
        fake_telegram, start_bot, queue, data_dir):
    fake = fake_telegram
    runner = await start_bot(BotConfig(max_active_jobs=3, poll_interval_s=0.05))
    fake.user_message(CHAT, USER, text="/settings")
    shown = await _settings_message(fake)
    assert [t for t, _ in _buttons(shown.params)] == [
        "Quality: fast", "Loop: off", "Colour match: off", "Chaining: svi-pro", "Seed: random"]
    assert [d for _, d in _buttons(shown.params)][0] == f"set:{USER}:quality"

    for i, key in enumerate(("quality", "chaining", "loop")):
        fake.press_button(CHAT, USER, shown.message_id, f"set:{USER}:{key}")
        await fake.wait_for(lambda n=i + 1: len(fake.callback_answers) == n, what=f"{key} answered")
    assert {e.message_id for e in fake.edits} == {shown.message_id} and len(fake.edits) == 3
    last = fake.edits[-1]
    assert [b["text"] for row in last.reply_markup["inline_keyboard"] for b in row][:4] == [
        "Quality: quality", "Loop: on", "Colour match: off", "Chaining: last-frame"]
    assert [a.get("text") for a in fake.callback_answers][-1] == "Loop: on"

    # Someone else pressing my buttons changes nothing.
    fake.press_button(CHAT, OTHER, shown.message_id, f"set:{USER}:quality")
    await fake.wait_for(lambda: len(fake.callback_answers) == 4, what="the stranger's answer")
    assert fake.callback_answers[-1]["show_alert"] is True and "someone else" in fake.callback_answers[-1]["text"]

    fake.user_message(CHAT, USER, text="/settings seed 4242")
    await fake.wait_for(lambda: any("Seed: 4242" in s.text for s in fake.sent_to(CHAT, "sendMessage")), what="seed")
    job = await _story_job(fake, queue, 1)
    assert job.settings == {"quality": "quality", "chaining": "last-frame", "loop": True, "seed": 4242}

    await runner.stop()  # a restart, with the queue reopened from its file
    await queue.close()
    reopened = await JobQueue.open(QueueConfig(db_path=data_dir.db_path), data_dir.photos)
    try:
        runner.queue = reopened
        await runner.start()
        job = await _story_job(fake, reopened, 2)
        assert job.settings.get("quality") == "quality" and job.settings["seed"] == 4242
        fake.user_message(CHAT, USER, text="/settings seed random")
        await fake.wait_for(lambda: any("Seed: random" in s.text for s in fake.sent_to(CHAT, "sendMessage")),
                            what="seed random")
        await asyncio.sleep(0.1)
        assert (await reopened.user_settings("telegram", str(USER)))["seed"] is None
    finally:
        await runner.stop()
        await reopened.close()


async def test_telegram_bad_setting_is_named_and_changes_nothing(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot()
    fake.user_message(CHAT, USER, text="/settings quality ultra")
    reply = await fake.wait_for(lambda: fake.texts_to(CHAT), what="the refusal")
    assert reply[0] == "quality is 'ultra'; it must be one of fast, quality"
    assert (await queue.user_settings("telegram", str(USER)))["quality"] == "fast"


async def test_a_reroll_repeats_the_job_not_the_current_defaults(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot(BotConfig(max_active_jobs=3, poll_interval_s=0.05))
    job = await _story_job(fake, queue, 1)
    assert set(job.settings) == {"seed"}  # nothing changed: the job is as before /settings existed
    await queue.set_user_setting("telegram", str(USER), "quality", "quality")
    job = await recorded_job(queue, 1)
    fake.press_button(CHAT, USER, int(job.status_message_id), "reroll:1")
    await fake.wait_for(lambda: len([s for s in fake.sent_to(CHAT, "sendMessage") if s.text.startswith("Queued")]) == 2,
                        what="the re-roll")
    assert "quality" not in (await queue.get_job(2)).settings


async def test_discord_settings_buttons_persist_and_the_seed_option_wins(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        asked = await fake.send_interaction(fake.slash("settings", 1001))
        await fake.wait_for(lambda: fake.callbacks_for(asked))
        shown = fake.callbacks_for(asked)[0]
        assert shown.data["flags"] & 64  # only the user sees it
        ids = [c["custom_id"] for row in shown.data["components"] for c in row["components"]]
        assert ids == [f"svibot:set:1001:{k}" for k in ("quality", "loop", "color_match", "chaining", "seed")]
        message_id = next(m.id for m in fake.messages.values() if m.token == asked["token"])
    async with running_bot(fake, queue, data_dir, bot_config):  # a restart: the old buttons still work
        for n, key in enumerate(("quality", "seed"), start=1):
            press = await fake.send_interaction(fake.button_press(f"svibot:set:1001:{key}", 1001, message_id))
            await fake.wait_for(lambda p=press: fake.callbacks_for(p))
            assert fake.callbacks_for(press)[0].type == 7  # the settings message is redrawn in place
        labels = [c["label"] for row in fake.callbacks_for(press)[0].data["components"] for c in row["components"]]
        assert labels[0] == "Quality: quality" and labels[4].startswith("Seed: ") and labels[4] != "Seed: random"
        stranger = await fake.send_interaction(fake.button_press("svibot:set:1001:quality", 2002, message_id))
        await fake.wait_for(lambda: fake.callbacks_for(stranger))
        assert "someone else" in fake.callbacks_for(stranger)[0].data["content"]

        stored = await queue.user_settings("discord", "1001")
        assert stored["quality"] == "quality" and isinstance(stored["seed"], int)
        await reply_of(fake, await send_story(fake, "walk | run", image=photo_bytes()))
        assert (await queue.get_job(1)).settings == {"quality": "quality", "seed": stored["seed"]}
        await reply_of(fake, await send_story(fake, "walk", image=photo_bytes(), seed=7))  # the command wins
        assert (await queue.get_job(2)).settings == {"quality": "quality", "seed": 7}
