"""One settings loader: the CLI, the worker and both bots read the same environment the same way."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bot.config import BotConfig
from storage.errors import BadSetting
from svibot.cli import build_parser, main
from svibot.config import Secret, build_config
from tests.bot.conftest import data_dir, fake_telegram, queue, start_bot  # noqa: F401 (fixtures)
from tests.bot.test_discord import discord_config, fake, photo_bytes, reply_of, running_bot, send_story  # noqa: F401

PHOTO = Path(__file__).resolve().parents[2] / "examples" / "chelsea.jpg"
ENV = {"SVIBOT_MAX_PROMPT_CHARS": "50", "SVIBOT_MAX_SEGMENTS": "3", "SVIBOT_PRESET": "tiny"}
LONG = "x" * 51


def config(env: dict, *argv: str):
    return build_config(build_parser().parse_args([*argv, "worker"]), env)


def test_bot_settings_come_from_the_same_loader():
    cfg = config({**ENV, "SVIBOT_ALLOWED_USERS": "1, 2,,", "SVIBOT_ADMINS": "9", "SVIBOT_MAX_ACTIVE_JOBS": "2",
                  "SVIBOT_STORIES_PER_DAY": "5"})
    assert cfg.bot.allowed_users == {"1", "2"} and cfg.bot.allowed_chats == frozenset() and cfg.bot.admins == {"9"}
    assert (cfg.bot.max_active_jobs, cfg.bot.stories_per_day) == (2, 5)
    assert cfg.bot.limits is cfg.limits
    assert (cfg.limits.max_prompt_chars, cfg.limits.max_segments) == (50, 3)
    with pytest.raises(BadSetting, match="SVIBOT_MAX_ACTIVE_JOBS must be a whole number but is 'many'"):
        config({"SVIBOT_MAX_ACTIVE_JOBS": "many"})
    with pytest.raises(BadSetting, match="SVIBOT_MAX_SEGMENTS is 0; it must be between 1 and 100"):
        config({"SVIBOT_MAX_SEGMENTS": "0"})
    with pytest.raises(BadSetting, match="SVIBOT_MAX_PROMPT_CHARS is 0; it must be at least 1"):
        config({"SVIBOT_MAX_PROMPT_CHARS": "0"})


def test_telegram_settings_derive_urls_and_cap_uploads_by_server():
    cloud = config({"TELEGRAM_BOT_TOKEN": "1:abc"}).telegram()
    assert (cloud.bot_url, cloud.file_url) == ("https://api.telegram.org/bot", "https://api.telegram.org/file/bot")
    assert cloud.upload_limit_bytes == 50 * 1024 * 1024
    local = config({"TELEGRAM_BOT_TOKEN": "1:abc", "TELEGRAM_API_BASE_URL": "http://localhost:8081/",
                    "SVIBOT_TELEGRAM_UPLOAD_LIMIT_MB": "2000"}).telegram()
    assert local.bot_url == "http://localhost:8081/bot" and local.upload_limit_mb == 2000
    with pytest.raises(BadSetting, match="SVIBOT_TELEGRAM_UPLOAD_LIMIT_MB is 2000; it must be between 1 and 50"):
        config({"TELEGRAM_BOT_TOKEN": "1:abc", "SVIBOT_TELEGRAM_UPLOAD_LIMIT_MB": "2000"})
    with pytest.raises(BadSetting, match="TELEGRAM_BOT_TOKEN is empty"):
        config({}).telegram()


def test_discord_settings():
    cfg = config({"DISCORD_BOT_TOKEN": "t", "DISCORD_GUILD_ID": "123", "SVIBOT_DISCORD_SPOILER": "Never"}).discord()
    assert (cfg.guild_id, cfg.spoiler, cfg.edit_interval_s) == (123, "never", 2.0)
    with pytest.raises(BadSetting, match="SVIBOT_DISCORD_SPOILER is 'maybe'"):
        config({"DISCORD_BOT_TOKEN": "t", "SVIBOT_DISCORD_SPOILER": "maybe"}).discord()
    with pytest.raises(BadSetting, match="DISCORD_GUILD_ID must be a numeric id, not 'abc'"):
        config({"DISCORD_BOT_TOKEN": "t", "DISCORD_GUILD_ID": "abc"})


def test_tokens_are_secrets_that_never_print():
    tg, dc = "123456:telegram-token-value", "discord.token.value"
    cfg = config({"TELEGRAM_BOT_TOKEN": tg, "DISCORD_BOT_TOKEN": dc})
    shown = " ".join([repr(cfg), str(cfg), repr(cfg.telegram_settings), f"{cfg.discord_settings}",
                      repr(cfg.telegram()), repr(cfg.discord()), str(dataclasses.asdict(cfg.telegram_settings))])
    assert tg not in shown and dc not in shown
    assert "Secret(<set>)" in shown and repr(Secret("")) == "Secret(<unset>)"
    assert cfg.telegram_settings.token.reveal() == tg and cfg.telegram().token == tg
    assert not config({}).telegram_settings.token


# -- the same environment, the same limits, in the CLI and both bots ---------------------------------
def test_cli_applies_the_environment_limits(tmp_path, capsys, monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert main(["--data-dir", str(tmp_path), "story", str(PHOTO), LONG]) == 2
    assert "51 characters long; the limit is 50" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path), "story", str(PHOTO), "a | b | c | d"]) == 2
    assert "4 segments; the limit is 3" in capsys.readouterr().err


async def test_telegram_bot_applies_the_environment_limits(fake_telegram, start_bot, queue):  # noqa: F811
    bot = dataclasses.replace(config(ENV).bot, poll_interval_s=0.05)
    await start_bot(bot)
    fake_telegram.user_message(1001, 1001, caption=f"/story {LONG}", photo=photo_bytes())
    fake_telegram.user_message(1001, 1001, caption="/story a | b | c | d", photo=photo_bytes())
    replies = await fake_telegram.wait_for(lambda: fake_telegram.texts_to(1001)[1:] and fake_telegram.texts_to(1001),
                                           what="two refusals")
    assert "51 characters long; the limit is 50" in replies[0]
    assert "4 segments; the limit is 3" in replies[1]
    assert await queue.list_jobs() == []


async def test_discord_bot_applies_the_environment_limits(fake, queue, data_dir):  # noqa: F811
    bot: BotConfig = dataclasses.replace(config(ENV).bot, poll_interval_s=0.05)
    async with running_bot(fake, queue, data_dir, bot):
        long_reply = await reply_of(fake, await send_story(fake, LONG, image=photo_bytes()))
        many_reply = await reply_of(fake, await send_story(fake, "a | b | c | d", image=photo_bytes()))
    assert "51 characters long; the limit is 50" in long_reply
    assert "4 segments; the limit is 3" in many_reply
    assert await queue.list_jobs() == []
