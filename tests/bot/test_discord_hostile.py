"""A hostile user against the Discord bot: each case through the real discord.py client and the fake
Discord, which refuses content over 2000 characters and works out whom each message pings."""
from __future__ import annotations

import asyncio
import logging
import time
import traceback
from urllib.parse import quote

import pytest

from bot import texts
from bot.config import BotConfig
from bot.discord_app import REPLY_FAILED, TOKEN_REJECTED, run_discord
from storage.errors import TokenRejected
from storage.redact import NOISY_LOGGERS, REDACTED, forget_secret
from tests.bot.test_discord import (  # noqa: F401  (fixtures)
    OWNER,
    STRANGER,
    TOKEN,
    custom_ids,
    discord_config,
    fake,
    photo_bytes,
    reply_of,
    running_bot,
    scripted_worker,
    send_story,
    status_message,
)
from tests.fakes.discord_api import FakeMessage, snowflake_at
from tests.storage.test_redact import spellings
from tests.storage.test_validate import _png_header_only


@pytest.fixture
def bot_config() -> BotConfig:
    return BotConfig(max_active_jobs=1, poll_interval_s=0.05)


async def queued_job(fake, prompts: str = "walk | run") -> tuple[int, object]:
    reply = await reply_of(fake, await send_story(fake, prompts, image=photo_bytes()))
    assert reply.startswith("Queued: job #"), reply
    job_id = int(reply.split("#")[1].split(",")[0])
    await fake.wait_for(lambda: status_message(fake, job_id) is not None)
    return job_id, status_message(fake, job_id)


# -- row 13 (and the bot token): nothing secret in any log record at DEBUG ---------------------------
async def test_no_token_of_any_kind_reaches_any_log_record_at_debug(fake, queue, data_dir, bot_config, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("discord", *NOISY_LOGGERS):
        caplog.set_level(logging.DEBUG, logger=name)
    async with running_bot(fake, queue, data_dir, bot_config):
        story = await send_story(fake, "walk", image=photo_bytes())
        await reply_of(fake, story)
        await fake.wait_for(lambda: status_message(fake, 1) is not None)
        press = await fake.send_interaction(fake.button_press("svibot:cancel:1", STRANGER, status_message(fake, 1).id))
        await reply_of(fake, press)
    interaction_tokens = [story["token"], press["token"]]
    assert all(len(t) > 100 for t in interaction_tokens)
    logged = caplog.text + "".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    for secret in (TOKEN, *interaction_tokens):
        for form, spelled in spellings(secret).items():
            assert spelled not in logged, form
    # The gateway dump and the webhook URLs were logged, with the tokens taken out.
    assert f"'token': '{REDACTED}'" in logged
    assert f"/interactions/{story['id']}/{REDACTED}/callback" in logged
    assert f"/webhooks/{fake.application_id}/{REDACTED}/messages/@original" in logged


async def test_a_rejected_token_ends_with_one_clear_error_that_does_not_carry_it(fake, queue, data_dir, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = TOKEN.replace("fake", "evil")
    with pytest.raises(TokenRejected) as err:
        await asyncio.wait_for(run_discord(discord_config(token=wrong), BotConfig(), queue, data_dir,
                                           asyncio.Event()), 30)
    forget_secret(wrong)
    assert str(err.value) == TOKEN_REJECTED == "the Discord token was rejected; check DISCORD_BOT_TOKEN"
    printed = "".join(traceback.format_exception(err.value)) + caplog.text
    assert wrong not in printed and quote(wrong, safe="") not in printed
    assert err.value.__context__ is None


# -- row 3: eight simultaneous stories, limit one --------------------------------------------------
async def test_eight_simultaneous_stories_with_limit_one_queue_exactly_one(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        interactions = await asyncio.gather(
            *[send_story(fake, f"walk {i}", image=photo_bytes((96 + i, 80))) for i in range(8)])
        replies = [await reply_of(fake, i) for i in interactions]
    assert len([r for r in replies if r.startswith("Queued: job #")]) == 1
    assert len([r for r in replies if "the limit is 1 per user" in r]) == 7
    assert len(await queue.list_jobs()) == 1


# -- row 4: mentions ping nobody -----------------------------------------------------------------------
async def test_prompts_with_mentions_ping_nobody(fake, queue, data_dir, bot_config):
    bob = 5005
    prompts = f"@everyone look | <@{bob}> waves | @here hi"
    async with running_bot(fake, queue, data_dir, bot_config):
        interaction = await send_story(fake, prompts, image=photo_bytes())
        await reply_of(fake, interaction)
        await scripted_worker(queue, data_dir)
        await fake.wait_for(lambda: len([m for m in fake.channel_messages() if m.uploads]) == 4)
        cancel = await fake.send_interaction(fake.slash("cancel", OWNER, {"job": 1}))
        await reply_of(fake, cancel)
    captions = [m.content for m in fake.channel_messages() if m.uploads]
    assert captions[:3] == ["Segment 1/3: @everyone look", f"Segment 2/3: <@{bob}> waves", "Segment 3/3: @here hi"]
    assert all(m.pinged == set() for m in fake.messages.values())
    with_content = [w for w in fake.writes if w.get("content")]
    assert with_content and all(w.get("allowed_mentions", {}).get("parse") == [] for w in with_content)


# -- row 5: replies that quote huge input fit; a refused reply is never left unanswered --------------
async def test_an_error_about_a_huge_story_quotes_an_excerpt_and_fits(fake, queue, data_dir, bot_config):
    story = "x" * 1000 + " |  | " + "y" * 984
    assert len(story) == 1990
    async with running_bot(fake, queue, data_dir, bot_config):
        reply = await reply_of(fake, await send_story(fake, story, image=photo_bytes()))
    assert reply.startswith("Prompt 2 of 3 is empty in 'xxx") and len(reply) < 200
    assert fake.rejected_content == [] and await queue.list_jobs() == []


async def test_a_refused_reply_falls_back_to_a_short_followup(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        fake.refuse("PATCH", r"/webhooks/\d+/[^/]+/messages/@original")
        interaction = await send_story(fake, "walk | | run", image=photo_bytes())
        await fake.wait_for(lambda: any(m.via == "followup" for m in fake.followups_for(interaction)))
    followup = next(m for m in fake.followups_for(interaction) if m.via == "followup")
    assert followup.content == str(REPLY_FAILED)


# -- rows 6 and 7 on Discord: buttons respect owners and channels -------------------------------------
async def test_buttons_refuse_strangers_other_channels_and_missing_jobs(fake, queue, data_dir):
    async with running_bot(fake, queue, data_dir, BotConfig(max_active_jobs=3, poll_interval_s=0.05)):
        job_id, status = await queued_job(fake)

        async def press(custom_id: str, user: int, channel: int | None = None) -> str:
            payload = fake.button_press(custom_id, user, status.id)
            if channel is not None:  # the same button, pressed where the job does not live
                payload["channel_id"] = payload["channel"]["id"] = str(channel)
            return await reply_of(fake, await fake.send_interaction(payload))

        assert (await press(f"svibot:reroll:{job_id}", STRANGER)).startswith(
            f"You cannot re-roll job #{job_id}: only its owner or an admin")
        assert (await press(f"svibot:reroll:{job_id}", OWNER, channel=fake.channel_id + 1)).startswith(
            f"Job #{job_id} belongs to another chat")
        assert (await press(f"svibot:cancel:{job_id}", OWNER, channel=fake.channel_id + 1)).startswith(
            f"Job #{job_id} belongs to another chat")
        # The status message of a job the queue no longer has (Discord only sends buttons that exist).
        orphan = FakeMessage(snowflake_at(time.time(), 99), fake.channel_id, "Job #99: done", [], [
            {"type": 1, "components": [{"type": 2, "style": 2, "label": "Re-roll", "custom_id": "svibot:reroll:99"}]}])
        fake.messages[orphan.id] = orphan
        missing = await fake.send_interaction(fake.button_press("svibot:reroll:99", OWNER, orphan.id))
        assert await reply_of(fake, missing) == "There is no job #99 to re-roll."
    assert [j.state for j in await queue.list_jobs()] == ["queued"]
    assert custom_ids(status) == [f"svibot:cancel:{job_id}", f"svibot:reroll:{job_id}"]


# -- row 11 on Discord: images by their bytes ------------------------------------------------------------
@pytest.mark.parametrize("content_type", [None, "application/octet-stream"])
async def test_an_image_with_a_wrong_or_missing_type_is_still_an_image(fake, queue, data_dir, bot_config,
                                                                       content_type):
    async with running_bot(fake, queue, data_dir, bot_config):
        reply = await reply_of(fake, await send_story(fake, "walk", image=photo_bytes(), filename="upload.bin",
                                                      content_type=content_type))
    assert reply.startswith("Queued: job #1")
    assert (await queue.get_job(1)).photo_path.endswith(".png")


async def test_a_too_large_image_says_its_size(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        reply = await reply_of(fake, await send_story(fake, "walk", image=_png_header_only(100000, 100000)))
    assert reply == "The photo is 100000x100000 = 10000.0 MP; the limit is 40 MP. Send a smaller photo."


# -- the allowlist on every command ---------------------------------------------------------------------
async def test_the_allowlist_applies_to_every_command_and_button(fake, queue, data_dir):
    config = BotConfig(allowed_users=frozenset({str(OWNER)}), poll_interval_s=0.05)
    async with running_bot(fake, queue, data_dir, config):
        job_id, status = await queued_job(fake, "walk")
        refusals = [
            await reply_of(fake, await fake.send_interaction(fake.slash(name, STRANGER, options)))
            for name, options in [("status", None), ("help", None), ("queue", None), ("cancel", {"job": job_id})]]
        refusals.append(await reply_of(fake, await send_story(fake, "walk", user=STRANGER, image=photo_bytes())))
        for custom_id in (f"svibot:cancel:{job_id}", f"svibot:reroll:{job_id}"):
            refusals.append(await reply_of(fake, await fake.send_interaction(
                fake.button_press(custom_id, STRANGER, status.id))))
    assert refusals == [str(texts.NOT_ALLOWED)] * 7
    assert [j.state for j in await queue.list_jobs()] == ["queued"]
