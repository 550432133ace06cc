"""Discord buttons, commands and the context menu against the fake Discord, including a client restart."""
from __future__ import annotations

from bot.discord_app import CONTEXT_MENU_NAME, NO_IMAGE_IN_MESSAGE
from tests.bot.test_discord import (  # noqa: F401  (fixtures)
    OWNER,
    STRANGER,
    bot_config,
    custom_ids,
    fake,
    photo_bytes,
    reply_of,
    running_bot,
    scripted_worker,
    send_story,
    status_message,
)

ADMIN = 9009


async def press(fake, custom_id: str, user: int, message_id: int) -> str:
    return await reply_of(fake, await fake.send_interaction(fake.button_press(custom_id, user, message_id)))


async def queued_story(fake, prompts: str = "walk | run", seed: int | None = 7):
    reply = await reply_of(fake, await send_story(fake, prompts, image=photo_bytes(), seed=seed))
    assert reply.startswith("Queued: job #")
    job_id = int(reply.split("#")[1].split(",")[0])
    await fake.wait_for(lambda: status_message(fake, job_id) is not None)
    return job_id, status_message(fake, job_id)


async def test_cancel_button_refuses_a_stranger_and_cancels_for_the_owner(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        job_id, status = await queued_story(fake)
        refused = await press(fake, f"svibot:cancel:{job_id}", STRANGER, status.id)
        assert refused.startswith(f"You cannot cancel job #{job_id}") and "only its owner or an admin" in refused
        assert (await queue.get_job(job_id)).state == "queued"

        assert await press(fake, f"svibot:cancel:{job_id}", OWNER, status.id) == f"Cancelled job #{job_id}."
        assert (await queue.get_job(job_id)).state == "cancelled"
        await fake.wait_for(lambda: "was cancelled" in status.content)
    assert custom_ids(status) == [f"svibot:reroll:{job_id}"]
    assert all(c.data.get("flags") == 64 for c in fake.callbacks if c.type == 4)  # only the presser sees it


async def test_admin_may_cancel_anyones_job(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        job_id, status = await queued_story(fake)
        assert await press(fake, f"svibot:cancel:{job_id}", ADMIN, status.id) == f"Cancelled job #{job_id}."
    assert (await queue.get_job(job_id)).state == "cancelled"


async def test_reroll_queues_the_same_story_with_a_new_seed(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        job_id, status = await queued_story(fake, seed=7)
        reply = await press(fake, f"svibot:reroll:{job_id}", OWNER, status.id)
        assert reply.startswith("Queued: job #2, position 2")
        await fake.wait_for(lambda: status_message(fake, 2) is not None)
    old, new = await queue.get_job(job_id), await queue.get_job(2)
    assert new.prompts == old.prompts == ["walk", "run"]
    assert new.photo_sha256 == old.photo_sha256
    assert old.settings["seed"] == 7 and new.settings["seed"] != 7
    assert new.meta["reroll_of"] == job_id and new.user_id == str(OWNER)
    assert custom_ids(status_message(fake, 2)) == ["svibot:cancel:2", "svibot:reroll:2"]


async def test_buttons_and_status_edits_survive_a_client_restart(fake, queue, data_dir, bot_config, tmp_path):
    async with running_bot(fake, queue, data_dir, bot_config):
        first, first_status = await queued_story(fake, "walk")
        second, second_status = await queued_story(fake, "fly")
    # A new client knows nothing about the messages it sent before; the custom ids carry the job.
    async with running_bot(fake, queue, data_dir, bot_config):
        refused = await press(fake, f"svibot:cancel:{second}", STRANGER, second_status.id)
        assert refused.startswith(f"You cannot cancel job #{second}")
        assert await press(fake, f"svibot:cancel:{second}", OWNER, second_status.id) == f"Cancelled job #{second}."
        reply = await press(fake, f"svibot:reroll:{first}", OWNER, first_status.id)
        assert reply.startswith("Queued: job #3")

        await scripted_worker(queue, data_dir)  # runs the first job; its status edits reach the old message
        await fake.wait_for(lambda: first_status.content.startswith(f"Job #{first}: done"))
    assert (await queue.get_job(second)).state == "cancelled"
    assert len([m for m in fake.channel_messages() if m.content.startswith(f"Job #{first}")]) == 1
    assert fake.rejected_uploads == []


async def test_each_event_is_delivered_once_across_a_restart(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        await queued_story(fake, "walk | run")
        await scripted_worker(queue, data_dir)
        await fake.wait_for(lambda: len([m for m in fake.channel_messages() if m.uploads]) == 3)
    async with running_bot(fake, queue, data_dir, bot_config):
        await fake.wait_for(lambda: len(fake.requests) > 0)
        uploads_before = len([m for m in fake.channel_messages() if m.uploads])
        # Give the restarted outbox several polls: nothing already delivered may be sent again.
        for _ in range(10):
            await fake.wait_for(lambda: True)
            await __import__("asyncio").sleep(0.05)
    assert len([m for m in fake.channel_messages() if m.uploads]) == uploads_before == 3
    assert await queue.pending_events("discord") == []


async def test_context_menu_opens_a_modal_and_queues_the_story(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        photo = fake.add_attachment("dog.png", photo_bytes(), "image/png")
        target = fake.user_message(OWNER, [photo])
        menu = await fake.send_interaction(fake.message_command(CONTEXT_MENU_NAME, OWNER, target))
        await fake.wait_for(lambda: any(c.type == 9 for c in fake.callbacks_for(menu)))
        modal = next(c for c in fake.callbacks_for(menu) if c.type == 9).data
        field = modal["components"][0]["components"][0]["custom_id"]
        submit = await fake.send_interaction(fake.modal_submit(modal["custom_id"], OWNER, {field: "sit | jump"}))
        assert (await reply_of(fake, submit)).startswith("Queued: job #1")
        await fake.wait_for(lambda: status_message(fake, 1) is not None)

        no_image = fake.user_message(OWNER, [], content="just text")
        reply = await reply_of(fake, await fake.send_interaction(
            fake.message_command(CONTEXT_MENU_NAME, OWNER, no_image)))
        assert reply == str(NO_IMAGE_IN_MESSAGE)
    job = await queue.get_job(1)
    assert job.prompts == ["sit", "jump"] and job.user_id == str(OWNER)


async def test_status_cancel_and_queue_commands(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        job_id, _ = await queued_story(fake, "walk")
        status = await reply_of(fake, await fake.send_interaction(fake.slash("status", OWNER)))
        assert f"#{job_id} queued, position 1" in status and "No GPU worker is online" in status

        refused = await reply_of(fake, await fake.send_interaction(fake.slash("queue", OWNER)))
        assert refused == "Only the bot's admins may do that."
        overview = await reply_of(fake, await fake.send_interaction(fake.slash("queue", ADMIN)))
        assert f"#{job_id} queued" in overview and f"user discord:{OWNER}" in overview

        other = await reply_of(fake, await fake.send_interaction(fake.slash("cancel", STRANGER, {"job": job_id})))
        assert other.startswith(f"You cannot cancel job #{job_id}")
        mine = await reply_of(fake, await fake.send_interaction(fake.slash("cancel", OWNER)))
        assert mine == f"Cancelled job #{job_id}."
        help_text = await reply_of(fake, await fake.send_interaction(fake.slash("help", STRANGER)))
        assert "/story prompts:" in help_text and "up to 10 segments" in help_text
        assert "no impersonation of real people" in help_text and "caption" not in help_text
    assert (await queue.get_job(job_id)).state == "cancelled"
