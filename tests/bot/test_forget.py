"""/forget on both bots, through the real PTB and discord.py clients against the fake servers:
after the confirmation button exactly the asking user's rows and files are gone, nothing of anyone
else; a "keep" press or a press by someone else changes nothing."""
from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from bot import forget
from bot.config import BotConfig
from storage import DataDir, JobQueue
from tests.bot.test_discord import (  # noqa: F401  (fixtures)
    OWNER,
    STRANGER,
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

USER, OTHER = 1001, 2002


def snapshot(data_dir: DataDir) -> dict[Path, str]:
    """Every user-data file under the data dir with its content hash (the database files aside)."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in data_dir.root.rglob("*")
            if p.is_file() and ".sqlite3" not in p.name}


async def wait_delivered(queue: JobQueue, platform: str) -> None:
    """So that the file set is final: the outbox writes no more re-encoded copies."""
    for _ in range(400):
        if not await queue.pending_events(platform):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{platform} events still pending")


async def rows_of(queue: JobQueue, job_id: int) -> tuple[int, int, int]:
    db = queue._db
    return tuple([int((await db.fetchone(f"SELECT COUNT(*) FROM {t} WHERE {c} = ?", job_id))[0])
                  for t, c in (("jobs", "id"), ("segments", "job_id"), ("events", "job_id"))])


async def refusal_users(queue: JobQueue) -> list[str]:
    return sorted(r[0] for r in await queue._db.fetchall("SELECT user_id FROM refusals"))


def job_files(before: dict[Path, str], data_dir: DataDir, job_id: int) -> set[Path]:
    folder = data_dir.segment_video(job_id, 0).parent
    return {p for p in before if folder in p.parents}


# -- Telegram -------------------------------------------------------------------------------------
async def test_telegram_forget_deletes_exactly_the_askers_jobs_after_the_button(
        fake_telegram, start_bot, queue, data_dir, worker):
    fake = fake_telegram
    await start_bot(BotConfig(max_active_jobs=3, poll_interval_s=0.05))
    shared, own = png_bytes(color="orange"), png_bytes(color="red")
    # OTHER's finished story and USER's finished one; USER's second one, same photo as OTHER's, still queued.
    fake.user_message(OTHER, OTHER, caption="/story c", photo=shared)
    await fake.wait_for(lambda: fake.texts_to(OTHER), what="OTHER queued")
    await worker.run_job()
    fake.user_message(USER, USER, caption="/story a | b", photo=own)
    await fake.wait_for(lambda: fake.texts_to(USER), what="USER queued")
    await worker.run_job()
    fake.user_message(USER, USER, caption="/story d", photo=shared)
    await fake.wait_for(lambda: len(fake.texts_to(USER)) >= 2, what="USER's second job queued")
    await queue.record_refusal("telegram", str(USER), str(USER), "blocked", "word")
    await queue.record_refusal("telegram", str(OTHER), str(OTHER), "blocked", "word")
    await wait_delivered(queue, "telegram")
    before = snapshot(data_dir)
    other_job, done_job, queued_job = 1, 2, 3
    assert [j.user_id for j in await queue.list_jobs()] and (await queue.get_job(other_job)).user_id == str(OTHER)
    own_photo = Path((await queue.get_job(done_job)).photo_path)
    own_photo = own_photo if own_photo.is_absolute() else data_dir.root / own_photo
    assert own_photo in before and job_files(before, data_dir, done_job)

    async def ask() -> dict:
        count = len(fake.texts_to(USER))
        fake.user_message(USER, USER, text="/forget")
        await fake.wait_for(lambda: len(fake.texts_to(USER)) > count, what="the /forget question")
        return fake.sent_to(USER, "sendMessage")[-1]

    question = await ask()
    assert question.text == str(forget.ask_text(2, 1))
    buttons = [b["callback_data"] for b in question.params["reply_markup"]["inline_keyboard"][0]]
    assert buttons == [f"forget:yes:{USER}", f"forget:no:{USER}"]

    # Someone else pressing "delete" on USER's question is refused; nothing changes.
    answers = len(fake.callback_answers)
    fake.press_button(USER, OTHER, question.message_id, f"forget:yes:{USER}")
    await fake.wait_for(lambda: len(fake.callback_answers) > answers, what="the refusal")
    assert fake.callback_answers[-1]["text"] == str(forget.NOT_YOURS)
    # "Keep" keeps everything and turns the question into the answer.
    fake.press_button(USER, USER, question.message_id, f"forget:no:{USER}")
    await fake.wait_for(lambda: fake.current_text(USER, question.message_id) == str(forget.KEPT), what="kept")
    assert snapshot(data_dir) == before
    assert [await rows_of(queue, j) for j in (done_job, queued_job)] == [(1, 2, len(await queue.events_for_job(done_job))),
                                                                         (1, 0, len(await queue.events_for_job(queued_job)))]
    assert await refusal_users(queue) == [str(USER), str(OTHER)]

    other_rows = await rows_of(queue, other_job)
    question = await ask()
    fake.press_button(USER, USER, question.message_id, f"forget:yes:{USER}")
    await fake.wait_for(lambda: (fake.current_text(USER, question.message_id) or "").startswith("Deleted"),
                        what="deleted")
    gone = job_files(before, data_dir, done_job) | job_files(before, data_dir, queued_job) | {own_photo}
    assert fake.current_text(USER, question.message_id) == str(forget.done_text(2, len(gone)))
    after = snapshot(data_dir)
    assert after == {p: h for p, h in before.items() if p not in gone}  # OTHER's files untouched, byte for byte
    assert [await rows_of(queue, j) for j in (done_job, queued_job)] == [(0, 0, 0), (0, 0, 0)]
    assert await rows_of(queue, other_job) == other_rows
    assert await refusal_users(queue) == [str(OTHER)]
    assert await queue.jobs_for_user("telegram", str(USER)) == []
    # The question was answered without buttons, so it cannot be pressed twice; asking again says so.
    assert fake.edits[-1].reply_markup is None
    assert (await ask()).text == str(forget.NOTHING_STORED)
    assert fake.sent_to(USER, "sendMessage")[-1].params.get("reply_markup") is None


# -- Discord --------------------------------------------------------------------------------------
async def test_discord_forget_deletes_exactly_the_askers_jobs_after_the_button(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        for user in (STRANGER, OWNER):
            reply = await reply_of(fake, await send_story(fake, "walk", user=user, image=photo_bytes()))
            assert reply.startswith("Queued: job #")
            await scripted_worker(queue, data_dir)
        await wait_delivered(queue, "discord")
        before = snapshot(data_dir)
        stranger_job, owner_job = 1, 2
        stranger_rows = await rows_of(queue, stranger_job)
        assert job_files(before, data_dir, owner_job)

        async def ask() -> tuple[dict, str]:
            interaction = await fake.send_interaction(fake.slash("forget", OWNER))
            return interaction, await reply_of(fake, interaction)

        interaction, text = await ask()
        assert text == str(forget.ask_text(1, 0))
        (question,) = fake.followups_for(interaction)
        ids = [c["custom_id"] for row in question.components for c in row["components"]]
        assert ids == [f"svibot:forget:yes:{OWNER}", f"svibot:forget:no:{OWNER}"]
        assert fake.callbacks_for(interaction)[0].data["flags"] == 64  # only the asker sees it

        refused = await reply_of(fake, await fake.send_interaction(
            fake.button_press(f"svibot:forget:yes:{OWNER}", STRANGER, question.id)))
        assert refused == str(forget.NOT_YOURS)
        kept = await fake.send_interaction(fake.button_press(f"svibot:forget:no:{OWNER}", OWNER, question.id))
        await fake.wait_for(lambda: fake.callbacks_for(kept))
        assert [(c.type, c.data["content"], c.data["components"]) for c in fake.callbacks_for(kept)] == \
            [(7, str(forget.KEPT), [])]
        assert snapshot(data_dir) == before and (await rows_of(queue, owner_job))[0] == 1

        interaction, _ = await ask()
        (question,) = fake.followups_for(interaction)
        done = await fake.send_interaction(fake.button_press(f"svibot:forget:yes:{OWNER}", OWNER, question.id))
        await fake.wait_for(lambda: fake.callbacks_for(done))
    gone = {p for p in before if p not in snapshot(data_dir)}
    assert gone == job_files(before, data_dir, owner_job)  # the photo is shared with the stranger's job: kept
    assert fake.callbacks_for(done)[0].data["content"] == str(forget.done_text(1, len(gone)))
    assert await rows_of(queue, owner_job) == (0, 0, 0)
    assert await rows_of(queue, stranger_job) == stranger_rows
    assert all(p.exists() for p in job_files(before, data_dir, stranger_job))
