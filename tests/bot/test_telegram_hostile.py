"""A hostile user against the Telegram bot: each case through the real PTB client and the fake Bot API,
which refuses over-limit texts as Telegram does."""
from __future__ import annotations

import asyncio
import io
import logging
import time
import traceback
from dataclasses import replace
from urllib.parse import quote

import pytest
from PIL import Image

from bot import texts
from bot.config import BotConfig, TelegramConfig
from bot.telegram import TOKEN_REJECTED, run_telegram
from storage import Limits
from storage.errors import TokenRejected
from storage.redact import NOISY_LOGGERS, REDACTED, forget_secret
from tests.fakes.telegram_api import FakeTelegram
from tests.storage.test_redact import spellings
from tests.storage.test_validate import _png_header_only

from .conftest import TelegramBotRunner, png_bytes

CHAT = USER = 1001
OTHER = 2002
GROUP = -500
REAL_SHAPED = "7712345678:AAHk3-q9Zr_5yXbLmN0pQw2eRtYuIoPaSdF"  # the shape of a real token


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 80), "purple").save(buf, "JPEG")
    return buf.getvalue()


async def reply_in(fake, chat: int, index: int) -> str:
    return (await fake.wait_for(lambda: fake.texts_to(chat)[index:], what=f"reply #{index} in {chat}"))[0]


def no_errors(caplog, fake) -> None:
    """Nothing went wrong on the bot's side: no traceback logged by it, no "something went wrong" sent."""
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info and r.name.startswith("bot")]
    assert tracebacks == []
    assert not [s for s in fake.sent if s.text == str(texts.INTERNAL_ERROR)]


# -- rows 1 and 13: no form of the token in any log record, at DEBUG ---------------------------------
async def test_no_form_of_the_token_reaches_any_log_record_at_debug(queue, data_dir, worker, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("telegram", *NOISY_LOGGERS):
        caplog.set_level(logging.DEBUG, logger=name)
    async with FakeTelegram(token=REAL_SHAPED) as fake:
        runner = TelegramBotRunner(fake, queue, data_dir, BotConfig(poll_interval_s=0.05))
        await runner.start()
        try:
            fake.user_message(CHAT, USER, caption="/story walk | run", photo=png_bytes())
            status = (await fake.wait_for(lambda: fake.sent_to(CHAT, "sendMessage")))[0]
            fake.press_button(CHAT, USER, status.message_id, "reroll:1")
            await fake.wait_for(lambda: fake.callback_answers, what="the button answer")
            await worker.run_job()
            await fake.wait_for(lambda: len(fake.sent_to(CHAT, "sendVideo")) == 3, what="the videos")
        finally:
            await runner.stop()
            forget_secret(REAL_SHAPED)
    logged = caplog.text + "".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    for form, spelled in spellings(REAL_SHAPED).items():
        assert spelled not in logged, form
    assert f"/file/bot{REDACTED}/files/" in logged  # the photo download was logged, redacted
    assert f"/bot{REDACTED}/sendVideo" in logged


# -- row 2: a rejected token -----------------------------------------------------------------------
@pytest.mark.parametrize("how", ["unauthorized", "getme-404"])
async def test_a_rejected_token_ends_with_one_clear_error_that_does_not_carry_it(queue, data_dir, caplog, how):
    caplog.set_level(logging.DEBUG)
    token = REAL_SHAPED if how == "getme-404" else REAL_SHAPED.replace("AAHk3", "BBXz9")
    async with FakeTelegram(token=REAL_SHAPED) as fake:
        if how == "getme-404":
            fake.get_me_status = 404
        config = TelegramConfig(token=token, api_base_url=fake.base_url)
        try:
            with pytest.raises(TokenRejected) as err:
                await asyncio.wait_for(run_telegram(config, BotConfig(), queue, data_dir, asyncio.Event()), 30)
        finally:
            forget_secret(token)
    assert str(err.value) == TOKEN_REJECTED == "the Telegram token was rejected; check TELEGRAM_BOT_TOKEN"
    assert err.value.__context__ is None and err.value.__cause__ is None
    printed = "".join(traceback.format_exception(err.value)) + caplog.text
    assert token not in printed and quote(token, safe="") not in printed


# -- row 3: limits hold under a burst ----------------------------------------------------------------
async def test_eight_simultaneous_stories_with_limit_one_queue_exactly_one(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot(BotConfig(max_active_jobs=1, poll_interval_s=0.05))
    for i in range(8):  # one getUpdates batch
        fake.user_message(CHAT, USER, caption=f"/story walk {i}", photo=png_bytes(color=(i * 30, 0, 0)))
    replies = await fake.wait_for(lambda: len(fake.texts_to(CHAT)) >= 8 and fake.texts_to(CHAT), what="8 replies")
    assert len([t for t in replies if t.startswith("Queued: job #1,")]) == 1
    assert len([t for t in replies if "the limit is 1 per user" in t]) == 7
    assert len(await queue.list_jobs()) == 1


# -- row 5: replies that quote huge input still fit ----------------------------------------------------
async def test_errors_about_huge_input_quote_an_excerpt_and_fit(fake_telegram, start_bot, queue, caplog):
    fake = fake_telegram
    await start_bot()
    fake.user_message(CHAT, USER, photo=png_bytes())
    story = "/story " + "x" * 1500 + " | | " + "y" * 1488
    assert len(story) == 3000
    fake.user_message(CHAT, USER, text=story)
    empty = await reply_in(fake, CHAT, 0)
    assert empty.startswith("Prompt 2 of 3 is empty in 'xxx") and len(empty) < 200
    fake.user_message(CHAT, USER, text="/cancel " + "z" * 4090)
    bad_id = await reply_in(fake, CHAT, 1)
    assert bad_id.startswith("'zzz") and "is not a job number" in bad_id and len(bad_id) < 100
    assert fake.rejected == [] and await queue.list_jobs() == []
    no_errors(caplog, fake)


async def test_every_outgoing_text_is_cut_to_telegrams_limits(fake_telegram, start_bot, queue, worker):
    fake = fake_telegram
    await start_bot(BotConfig(limits=Limits(max_prompt_chars=1500), poll_interval_s=0.05))
    fake.user_message(CHAT, USER, caption="/story " + "a" * 1200, photo=png_bytes())
    await reply_in(fake, CHAT, 0)
    job = await worker.claim()
    await worker.run_segments(job, range(1))
    caption = (await fake.wait_for(lambda: fake.sent_to(CHAT, "sendVideo")))[0].text
    assert caption.startswith("Segment 1/1: aaa") and caption.endswith("\u2026") and len(caption) == 1024
    # A worker error can be long and can quote a URL with the token in it.
    await queue.fail(job.id, worker.id, f"GET https://api.telegram.org/bot{fake.token}/x failed: " + "e" * 6000)
    failed = await fake.wait_for(lambda: [t for t in fake.texts_to(CHAT) if t.startswith("Job #1 failed")])
    assert len(failed[0]) == 4096 and failed[0].endswith("\u2026")
    assert fake.token not in failed[0] and REDACTED in failed[0]
    await fake.wait_for(lambda: any(e.text.startswith("Job #1 failed") for e in fake.edits), what="status edit")
    assert fake.rejected == []


# -- rows 6 and 7: buttons respect owners and chats, and are always answered ---------------------------
async def test_buttons_on_missing_foreign_or_other_chat_jobs_are_answered_and_change_nothing(
        fake_telegram, start_bot, queue, caplog):
    fake = fake_telegram
    await start_bot(BotConfig(max_active_jobs=3, poll_interval_s=0.05))
    fake.user_message(CHAT, USER, caption="/story a | b", photo=png_bytes())
    status = (await fake.wait_for(lambda: fake.sent_to(CHAT, "sendMessage")))[0]
    # A bot message in the stranger's own chat and in a group, for forged callbacks to sit under.
    fake.user_message(OTHER, OTHER, text="/help")
    fake.user_message(GROUP, USER, text="/help")
    other_msg = (await fake.wait_for(lambda: fake.sent_to(OTHER, "sendMessage")))[0]
    group_msg = (await fake.wait_for(lambda: fake.sent_to(GROUP, "sendMessage")))[0]

    presses = [
        (CHAT, USER, status.message_id, "reroll:99", "There is no job #99 to re-roll."),
        (CHAT, USER, status.message_id, "cancel:99", "There is no job #99 to cancel."),
        (OTHER, OTHER, other_msg.message_id, "reroll:1", "You cannot re-roll job #1: only its owner or an admin"),
        (OTHER, OTHER, other_msg.message_id, "cancel:1", "You cannot cancel job #1: only its owner or an admin"),
        (GROUP, USER, group_msg.message_id, "reroll:1", "Job #1 belongs to another chat"),
        (GROUP, USER, group_msg.message_id, "cancel:1", "Job #1 belongs to another chat"),
        (CHAT, USER, status.message_id, "reroll:x1", "This button is not valid any more."),
    ]
    for chat, user, message_id, data, expected in presses:
        query_id = fake.press_button(chat, user, message_id, data)
        answers = await fake.wait_for(
            lambda: [a for a in fake.callback_answers if a["callback_query_id"] == query_id], what=data)
        await asyncio.sleep(0.05)
        assert len([a for a in fake.callback_answers if a["callback_query_id"] == query_id]) == 1
        assert answers[0]["text"].startswith(expected), (data, answers[0]["text"])
    assert [j.state for j in await queue.list_jobs()] == ["queued"]
    assert len(fake.sent_to(OTHER)) == 1 and len(fake.sent_to(GROUP)) == 1  # only the /help replies
    assert fake.rejected == []
    no_errors(caplog, fake)


# -- row 8: the prompt length limit from the environment ---------------------------------------------
async def test_the_prompt_length_limit_from_the_environment_is_enforced_and_shown(fake_telegram, start_bot, queue):
    fake = fake_telegram
    bot_config = BotConfig(limits=Limits(max_prompt_chars=20), poll_interval_s=0.05)
    await start_bot(bot_config)
    fake.user_message(CHAT, USER, text="/help")
    assert "prompts up to 20 characters" in await reply_in(fake, CHAT, 0)
    fake.user_message(CHAT, USER, caption="/story " + "a cat walks slowly " * 5, photo=png_bytes())
    assert await reply_in(fake, CHAT, 1) == "Prompt 1 is 94 characters long; the limit is 20."
    assert await queue.list_jobs() == []


# -- row 9: stop with an upload hanging ----------------------------------------------------------------
async def test_stop_with_a_hanging_upload_is_bounded_and_the_segment_is_sent_once_after_a_restart(
        fake_telegram, start_bot, queue, worker):
    fake = fake_telegram
    runner = await start_bot(BotConfig(poll_interval_s=0.05, shutdown_grace_s=1.0))
    fake.user_message(CHAT, USER, caption="/story a | b", photo=png_bytes())
    await reply_in(fake, CHAT, 0)
    fake.hang_next("sendVideo")
    job = await worker.claim()
    await worker.run_segments(job, range(1))
    await fake.wait_for(lambda: fake.method_calls("sendVideo"), what="the upload to start")
    started = time.monotonic()
    await runner.stop()
    assert time.monotonic() - started < 5.0  # the grace (1 s) plus PTB's own shutdown
    assert [e.kind for e in await queue.pending_events("telegram") if e.kind == "segment"] == ["segment"]
    assert fake.sent_to(CHAT, "sendVideo") == []

    await runner.start()
    await fake.wait_for(lambda: fake.sent_to(CHAT, "sendVideo"), what="the segment after the restart")
    await worker.run_segments(job, range(1, 2))
    await worker.complete(job)
    await fake.wait_for(lambda: len(fake.sent_to(CHAT, "sendVideo")) == 3, what="the rest")
    await asyncio.sleep(0.3)
    assert [v.text for v in fake.sent_to(CHAT, "sendVideo")][:2] == ["Segment 1/2: a", "Segment 2/2: b"]
    assert len(fake.sent_to(CHAT, "sendVideo")) == 3


# -- row 10: Telegram file errors ------------------------------------------------------------------------
@pytest.mark.parametrize("failure, queued", [
    ("getFile-500-once", True), ("getFile-400", False), ("getFile-500", False), ("download-404", False)])
async def test_file_errors_are_retried_with_backoff_then_answered_specifically(
        fake_telegram, start_bot, queue, caplog, failure, queued):
    fake = fake_telegram
    await start_bot(file_retry_s=(0.05, 0.1))
    if failure == "getFile-500-once":
        fake.fail_next("getFile", status=500)
    elif failure == "getFile-400":
        fake.fail_next("getFile", status=400, times=3)
    elif failure == "getFile-500":
        fake.fail_next("getFile", status=500, times=3)
    else:
        fake.fail_downloads(3, status=404)
    fake.user_message(CHAT, USER, caption="/story walk", photo=png_bytes())
    reply = await reply_in(fake, CHAT, 0)
    if queued:
        assert reply.startswith("Queued: job #1") and len(fake.method_calls("getFile")) == 2
    else:
        assert reply == str(texts.download_failed_text(3))
        assert len(fake.method_calls("getFile")) == 3 and await queue.list_jobs() == []
    no_errors(caplog, fake)


# -- row 11: images by content, and the size of one too large -------------------------------------------
@pytest.mark.parametrize("case", ["bomb-photo", "jpeg-without-mime", "jpeg-as-octet-stream"])
async def test_images_are_recognised_by_their_bytes(fake_telegram, start_bot, queue, case):
    fake = fake_telegram
    await start_bot()
    if case == "bomb-photo":
        fake.user_message(CHAT, USER, caption="/story walk", photo=_png_header_only(100000, 100000))
        assert await reply_in(fake, CHAT, 0) == (
            "The photo is 100000x100000 = 10000.0 MP; the limit is 40 MP. Send a smaller photo.")
        assert await queue.list_jobs() == []
        return
    mime = None if case == "jpeg-without-mime" else "application/octet-stream"
    fake.user_message(CHAT, USER, caption="/story walk", document=(jpeg_bytes(), mime, "IMG_0042"))
    assert (await reply_in(fake, CHAT, 0)).startswith("Queued: job #1")
    assert (await queue.get_job(1)).photo_path.endswith(".jpg")


# -- row 12: invisible prompts -----------------------------------------------------------------------------
async def test_a_story_of_zero_width_spaces_is_empty(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot()
    fake.user_message(CHAT, USER, caption="/story \u200b | \u200b", photo=png_bytes())
    assert (await reply_in(fake, CHAT, 0)).startswith("The story is empty.")
    assert await queue.list_jobs() == []


# -- the allowlist on every command --------------------------------------------------------------------------
async def test_the_allowlist_applies_to_every_command_and_button(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot(BotConfig(allowed_users=frozenset({str(USER)}), poll_interval_s=0.05))
    fake.user_message(GROUP, USER, caption="/story a", photo=png_bytes())
    status = (await fake.wait_for(lambda: fake.sent_to(GROUP, "sendMessage")))[0]
    for command in ("/help", "/start", "/status", "/queue", "/cancel 1", "/story b"):
        fake.user_message(GROUP, OTHER, text=command)
    fake.user_message(GROUP, OTHER, photo=png_bytes())  # a plain photo from outside: ignored
    query_id = fake.press_button(GROUP, OTHER, status.message_id, "cancel:1")
    await fake.wait_for(lambda: len(fake.texts_to(GROUP)) == 7 and fake.callback_answers, what="refusals")
    await asyncio.sleep(0.2)
    assert fake.texts_to(GROUP)[1:] == [str(texts.NOT_ALLOWED)] * 6
    assert fake.callback_answers == [
        {"callback_query_id": query_id, "text": str(texts.NOT_ALLOWED), "show_alert": True}]
    assert [j.state for j in await queue.list_jobs()] == ["queued"]
    assert fake.method_calls("getFile") == [fake.method_calls("getFile")[0]]  # only the allowed user's photo
