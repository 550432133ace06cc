"""/stats on both bots (admins only) and `svibot stats`, from a queue seeded through the bots."""
from __future__ import annotations

import asyncio
import json

from bot.config import BotConfig
from bot.moderation import BlockedWords
from svibot.cli import main
from tests.bot.test_discord import (  # noqa: F401  (fixtures)
    OWNER,
    bot_config,
    fake,
    photo_bytes,
    reply_of,
    running_bot,
    send_story,
)

from .conftest import png_bytes

CHAT = USER = 1001
ADMIN = 9009


async def test_telegram_stats_for_admins_only(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot(BotConfig(admins=frozenset({str(ADMIN)}), blocked_words=BlockedWords.parse("gore"),
                              poll_interval_s=0.05))
    fake.user_message(CHAT, USER, caption="/story walk | run", photo=png_bytes())
    await fake.wait_for(lambda: fake.texts_to(CHAT), what="queued")
    fake.user_message(CHAT, USER, caption="/story walk | gore", photo=png_bytes())
    await fake.wait_for(lambda: fake.texts_to(CHAT)[1:], what="refusal")

    fake.user_message(CHAT, USER, text="/stats")
    assert (await fake.wait_for(lambda: fake.texts_to(CHAT)[2:], what="/stats refusal"))[0] == \
        "Only the bot's admins may do that."
    fake.user_message(ADMIN, ADMIN, text="/stats")
    text = (await fake.wait_for(lambda: fake.texts_to(ADMIN), what="/stats"))[0]
    assert text.startswith("Usage, last 7 days (UTC): stories / segments")
    assert text.count(": 0 / 0") == 6 and ": 1 / 0" in text  # six quiet days, then today's story
    assert "Active users: 1. Queue now: 1 queued, 0 running." in text
    assert "Stories refused before queueing: 1 (blocked_word: 1)" in text
    assert "Failures: none." in text


async def test_discord_stats_for_admins_only(fake, queue, data_dir, bot_config):  # noqa: F811
    async with running_bot(fake, queue, data_dir, bot_config):
        reply = await reply_of(fake, await send_story(fake, "walk | run", image=photo_bytes(), seed=7))
        assert reply.startswith("Queued: job #1")
        refused = await reply_of(fake, await fake.send_interaction(fake.slash("stats", OWNER)))
        assert refused == "Only the bot's admins may do that."
        text = await reply_of(fake, await fake.send_interaction(fake.slash("stats", ADMIN)))
    assert "Active users: 1. Queue now: 1 queued, 0 running." in text and ": 1 / 0" in text


def test_cli_stats_prints_text_and_json(tmp_path, capsys):
    from storage import DataDir, JobQueue, Limits, NewJob, QueueConfig

    async def seed() -> None:
        data = DataDir(tmp_path)
        async with await JobQueue.open(QueueConfig(db_path=data.db_path), data.photos) as q:
            await q.enqueue(NewJob("telegram", "c", "u1", png_bytes(), ["walk", "run"], {"seed": 1}), Limits())
            await q.enqueue(NewJob("discord", "c", "u2", png_bytes(), ["fly"], {"seed": 2}), Limits())
            await q.record_refusal("telegram", "c", "u3", "blocked_word", "gore")

    asyncio.run(seed())
    assert main(["--data-dir", str(tmp_path), "stats", "--days", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [d["stories"] for d in report["days"]] == [0, 2]
    assert (report["active_users"], report["queued"], report["running"]) == (2, 2, 0)
    assert report["refusals"] == {"blocked_word": 1} and report["failures"] == {}
    assert main(["--data-dir", str(tmp_path), "stats"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage, last 7 days") and "Queue now: 2 queued, 0 running." in out
    assert main(["--data-dir", str(tmp_path), "stats", "--days", "0"]) == 2
    assert "--days is 0; it must be at least 1" in capsys.readouterr().err
