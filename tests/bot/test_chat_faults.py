"""Chat APIs failing, through the real PTB and discord.py clients against the fake servers: 5xx
answers, dropped connections and 429s while polling, uploading and editing are retried with
backoff, and every message still arrives exactly once."""
from __future__ import annotations

import asyncio
import logging
import time

from bot.config import BotConfig
from tests.bot.test_discord import (  # noqa: F401  (fixtures)
    bot_config,
    fake,
    photo_bytes,
    reply_of,
    running_bot,
    scripted_worker,
    send_story,
    status_message,
)

from .conftest import png_bytes

CHAT = USER = 1001


async def all_delivered(queue, platform: str, timeout: float = 10.0) -> bool:
    """The last event is marked right after the platform accepted it; give that a moment."""
    deadline = time.monotonic() + timeout
    while await queue.pending_events(platform):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
CAPTIONS = ["Segment 1/3: a", "Segment 2/3: b", "Segment 3/3: c"]


async def test_telegram_faults_in_polling_uploads_and_edits_lose_and_repeat_nothing(
        fake_telegram, start_bot, queue, worker):
    fake = fake_telegram
    await start_bot(BotConfig(poll_interval_s=0.05, retry_base_s=0.1))
    # Polling: a 502 and a dropped connection; PTB's polling loop backs off and polls again.
    fake.fail_next("getUpdates", status=502)
    fake.drop_next("getUpdates")
    fake.user_message(CHAT, USER, caption="/story a | b | c", photo=png_bytes())
    reply = (await fake.wait_for(lambda: fake.sent_to(CHAT, "sendMessage"), what="queued reply"))[0]
    assert reply.text.startswith("Queued: job #1")
    # Uploads: a 500, a dropped connection and a 429; edits: a 502 and a dropped connection.
    fake.fail_next("sendVideo", status=500)
    fake.drop_next("sendVideo")
    fake.fail_next("sendVideo", retry_after=1)
    fake.fail_next("editMessageText", status=502)
    fake.drop_next("editMessageText")
    await worker.run_job()
    await fake.wait_for(lambda: "done" in (fake.current_text(CHAT, reply.message_id) or ""), timeout=30,
                        what="the done status")

    injected = [("getUpdates", 502), ("getUpdates", 0), ("sendVideo", 500), ("sendVideo", 0), ("sendVideo", 429),
                ("editMessageText", 502), ("editMessageText", 0)]
    assert sorted(fake.rejected) == sorted(injected)  # every fault was hit
    videos = fake.sent_to(CHAT, "sendVideo")
    assert [v.text for v in videos[:3]] == CAPTIONS and videos[3].text.startswith("Your story (3 segments")
    assert len(videos) == 4  # nothing twice
    assert await all_delivered(queue, "telegram")
    assert [m.text for m in fake.sent_to(CHAT, "sendMessage")] == [reply.text]  # one status message, edited


async def test_discord_long_rate_limit_becomes_an_outbox_retry_not_a_stall(fake, queue, data_dir, bot_config, caplog):
    caplog.set_level(logging.WARNING, logger="bot.outbox")
    async with running_bot(fake, queue, data_dir, bot_config):
        assert (await reply_of(fake, await send_story(fake, "a | b | c", image=photo_bytes()))).startswith("Queued")
        await fake.wait_for(lambda: status_message(fake, 1) is not None)
        # The first upload gets a 429 asking for 45 s: over max_ratelimit_timeout, so discord.py
        # raises RateLimited instead of sleeping inside the request.
        fake.rate_limit("POST", r"/channels/\d+/messages", retry_after=45)
        await scripted_worker(queue, data_dir)
        await fake.wait_for(lambda: "waiting 45.0 s" in caplog.text, timeout=10)
        assert not [m for m in fake.channel_messages() if m.uploads]
        assert any(e.kind == "segment" for e in await queue.pending_events("discord"))
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 5  # the wait is the outbox's, so a stop ends it at once
    async with running_bot(fake, queue, data_dir, bot_config):
        await fake.wait_for(lambda: len([m for m in fake.channel_messages() if m.uploads]) == 4)
        await fake.wait_for(lambda: status_message(fake, 1).content.startswith("Job #1: done"))
    assert [m.content for m in fake.channel_messages() if m.uploads][:3] == ["Segment 1/3: a", "Segment 2/3: b",
                                                                           "Segment 3/3: c"]
    assert await all_delivered(queue, "discord")


async def test_discord_5xx_on_an_upload_is_retried_with_backoff_and_sent_once(fake, queue, data_dir):
    config = BotConfig(admins=frozenset({"9009"}), max_active_jobs=3, poll_interval_s=0.05, retry_base_s=0.1)
    async with running_bot(fake, queue, data_dir, config):
        assert (await reply_of(fake, await send_story(fake, "a | b | c", image=photo_bytes()))).startswith("Queued")
        await fake.wait_for(lambda: status_message(fake, 1) is not None)
        fake.refuse("POST", r"/channels/\d+/messages", status=503)  # discord.py does not retry a 503 itself
        fake.refuse("PATCH", r"/channels/\d+/messages/\d+", status=503)
        await scripted_worker(queue, data_dir)
        await fake.wait_for(lambda: len([m for m in fake.channel_messages() if m.uploads]) == 4
                            and status_message(fake, 1).content.startswith("Job #1: done"))
        await asyncio.sleep(0.3)  # room for a duplicate to show up, if one were coming
    assert [s for _, _, s in fake.requests].count(503) == 2
    videos = [m.content for m in fake.channel_messages() if m.uploads]
    assert videos[:3] == ["Segment 1/3: a", "Segment 2/3: b", "Segment 3/3: c"] and len(videos) == 4
