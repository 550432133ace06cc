"""The Telegram bot's refusals, bad input, commands and buttons, over HTTP against the fake Bot API."""
from __future__ import annotations

import asyncio
import logging

from bot.config import BotConfig
from storage import WorkerId, WorkerInfo

from .conftest import png_bytes

CHAT = USER = 1001
OTHER = 2002


async def _reply_to(fake, chat: int, index: int) -> str:
    """The chat's index-th sendMessage text (waits for it)."""
    return (await fake.wait_for(lambda: fake.texts_to(chat)[index:], what=f"reply #{index} in {chat}"))[0]


async def test_unauthorized_user_is_refused_and_nothing_is_queued(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot(BotConfig(allowed_users=frozenset({"1001"}), poll_interval_s=0.05))
    fake.user_message(OTHER, OTHER, caption="/story a | b", photo=png_bytes())
    assert "private" in await _reply_to(fake, OTHER, 0)
    assert await queue.list_jobs() == []
    assert fake.method_calls("getFile") == []  # refused before downloading anything


async def test_chat_allowlist_refuses_other_chats(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot(BotConfig(allowed_chats=frozenset({"-500"}), poll_interval_s=0.05))
    fake.user_message(-600, USER, caption="/story a", photo=png_bytes())
    assert "not enabled in this chat" in await _reply_to(fake, -600, 0)
    fake.user_message(-500, USER, caption="/story a", photo=png_bytes())
    assert (await _reply_to(fake, -500, 0)).startswith("Queued: job #1")
    assert len(await queue.list_jobs()) == 1


async def test_second_job_over_the_active_job_limit_is_refused_with_the_reason(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot()
    fake.user_message(CHAT, USER, caption="/story a", photo=png_bytes())
    assert (await _reply_to(fake, CHAT, 0)).startswith("Queued: job #1")
    fake.user_message(CHAT, USER, caption="/story b", photo=png_bytes(color="red"))
    refusal = await _reply_to(fake, CHAT, 1)
    assert "1 active job (#1); the limit is 1 per user" in refusal
    assert "/cancel" in refusal  # says how the limit frees up
    assert [j.id for j in await queue.list_jobs()] == [1]


async def test_daily_limit_says_when_it_resets(fake_telegram, start_bot, queue, worker):
    fake = fake_telegram
    await start_bot(BotConfig(stories_per_day=1, poll_interval_s=0.05))
    fake.user_message(CHAT, USER, caption="/story a", photo=png_bytes())
    await _reply_to(fake, CHAT, 0)
    await worker.run_job()
    fake.user_message(CHAT, USER, caption="/story b", photo=png_bytes())
    refusal = await fake.wait_for(lambda: [t for t in fake.texts_to(CHAT) if "per day" in t], what="daily refusal")
    assert "limit is 1 per day" in refusal[0] and "resets at 00:00 UTC" in refusal[0]
    assert len(await queue.list_jobs()) == 1


async def test_bad_input_gets_a_specific_reply_and_queues_nothing(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot()
    cases = [
        (dict(text="/story a | b"), "There is no photo for this story"),
        (dict(caption="/story", photo=png_bytes()), "The story is empty"),
        (dict(caption="/story a |  | c", photo=png_bytes()), "Prompt 2 of 3 is empty"),
        (dict(caption="/story " + " | ".join("abcdefghijk"), photo=png_bytes()),
         "The story has 11 segments; the limit is 10"),
        (dict(caption="/story a", photo=png_bytes(), reported_size=25 * 1024 * 1024),
         "The photo is 25.0 MB; the limit is 20 MB"),
        (dict(caption="/story a", document=(b"%PDF-1.4\n%\xe2\xe3\n", "application/pdf", "story.pdf")),
         "not an image I can read"),
        (dict(caption="/story a", document=(b"not really a png", "image/png", "fake.png")),
         "not an image I can read"),
    ]
    big_photo = None
    for i, (message, expected) in enumerate(cases):
        sent = fake.user_message(CHAT, USER, **message)
        if message.get("reported_size"):
            big_photo = sent["photo"][-1]["file_id"]
        reply = await _reply_to(fake, CHAT, i)
        assert expected in reply, (message.get("caption") or message.get("text"), reply)
    assert await queue.list_jobs() == []
    # The 25 MB photo was refused from its reported size, before any download.
    downloads = [c["file_id"] for c in fake.method_calls("getFile")]
    assert big_photo is not None and big_photo not in downloads


async def test_cancel_by_owner_works_and_by_someone_else_is_refused(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot()
    fake.user_message(CHAT, USER, caption="/story a | b", photo=png_bytes())
    await _reply_to(fake, CHAT, 0)

    fake.user_message(OTHER, OTHER, text="/cancel 1")
    assert "You cannot cancel job #1" in await _reply_to(fake, OTHER, 0)
    assert (await queue.get_job(1)).state == "queued"

    fake.user_message(CHAT, USER, text="/cancel")
    assert await _reply_to(fake, CHAT, 1) == "Cancelled job #1."
    assert (await queue.get_job(1)).state == "cancelled"
    await fake.wait_for(lambda: any("cancelled" in e.text for e in fake.edits), what="status shows cancelled")


async def test_admin_may_cancel_any_job_and_see_the_queue(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot(BotConfig(admins=frozenset({str(OTHER)}), poll_interval_s=0.05))
    fake.user_message(CHAT, USER, caption="/story a | b", photo=png_bytes())
    await _reply_to(fake, CHAT, 0)
    fake.user_message(CHAT, USER, text="/queue")
    assert await _reply_to(fake, CHAT, 1) == "Only the bot's admins may do that."
    await queue.register_worker(WorkerId("gpu-box:7:ab", "gpu-box", 7), WorkerInfo("q4_k_m", "Tesla T4", 14.5, 12.0))
    fake.user_message(OTHER, OTHER, text="/queue")
    overview = await _reply_to(fake, OTHER, 0)
    assert "#1 queued, position 1" in overview and "telegram:1001" in overview
    assert "GPU workers online: 1.\n  gpu-box (Tesla T4, 14.5 GiB, q4_k_m): idle" in overview
    fake.user_message(OTHER, OTHER, text="/cancel 1")
    assert await _reply_to(fake, OTHER, 1) == "Cancelled job #1."


async def test_buttons_cancel_for_owner_only_and_reroll_queues_a_new_seed(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot()
    fake.user_message(CHAT, USER, caption="/story a | b", photo=png_bytes())
    status = (await fake.wait_for(lambda: fake.sent_to(CHAT, "sendMessage")))[0]

    fake.press_button(CHAT, OTHER, status.message_id, "cancel:1")
    await fake.wait_for(lambda: fake.callback_answers, what="answer to the stranger")
    assert "cannot cancel job #1" in fake.callback_answers[0]["text"]
    assert fake.callback_answers[0]["show_alert"] is True
    assert (await queue.get_job(1)).state == "queued"

    fake.press_button(CHAT, USER, status.message_id, "cancel:1")
    await fake.wait_for(lambda: len(fake.callback_answers) == 2, what="answer to the owner")
    assert fake.callback_answers[1]["text"] == "Cancelled job #1."
    assert (await queue.get_job(1)).state == "cancelled"

    fake.press_button(CHAT, USER, status.message_id, "reroll:1")
    await fake.wait_for(lambda: len(fake.callback_answers) == 3, what="answer to the re-roll")
    assert fake.callback_answers[2]["text"] == "Queued job #2."
    old, new = await queue.get_job(1), await queue.get_job(2)
    assert new.prompts == old.prompts and new.photo_sha256 == old.photo_sha256
    assert new.settings["seed"] != old.settings["seed"]
    assert new.meta["reroll_of"] == 1
    assert fake.texts_to(CHAT)[-1].startswith("Queued: job #2")


async def test_help_and_status(fake_telegram, start_bot, queue, worker):
    fake = fake_telegram
    await start_bot()
    await worker.online()
    fake.user_message(CHAT, USER, text="/help")
    help_text = await _reply_to(fake, CHAT, 0)
    assert "/story" in help_text and "up to 10 segments" in help_text and "a GPU worker is online" in help_text
    assert "no impersonation of real people" in help_text
    fake.user_message(CHAT, USER, caption="/story a | b", photo=png_bytes())
    queued = await _reply_to(fake, CHAT, 1)
    assert "No GPU worker" not in queued
    fake.user_message(CHAT, USER, text="/status")
    status = await _reply_to(fake, CHAT, 2)
    assert "#1 queued, position 1" in status and "A GPU worker is online." in status


async def test_token_never_appears_in_logs(fake_telegram, start_bot, caplog):
    fake = fake_telegram
    caplog.set_level(logging.DEBUG)
    await start_bot()
    fake.user_message(CHAT, USER, text="/help")
    await _reply_to(fake, CHAT, 0)
    logging.getLogger("telegram.ext.Application").error("boom", exc_info=RuntimeError(f"url .../bot{fake.token}/x"))
    await asyncio.sleep(0.1)
    assert "<redacted>" in caplog.text  # httpx logged the request URLs, which carry the token
    assert fake.token not in caplog.text
    assert all(fake.token not in r.getMessage() for r in caplog.records)


async def test_whoami_answers_ids_even_to_users_outside_the_allowlist(fake_telegram, start_bot, queue):
    # An operator finds the id to allow with /whoami, so it must work before they are allowed.
    fake = fake_telegram
    await start_bot(BotConfig(allowed_users=frozenset({"nobody-yet"}), poll_interval_s=0.05))
    fake.user_message(-700, OTHER, text="/whoami")
    reply = await _reply_to(fake, -700, 0)
    assert f"Your Telegram user id: {OTHER}" in reply and "This chat's id: -700" in reply
    assert f"SVIBOT_ALLOWED_USERS={OTHER}" in reply and "OPERATOR_ID" in reply
    assert await queue.list_jobs() == []
