"""The Discord bot end to end: the real discord.py client against the fake Discord on 127.0.0.1.

The worker side is a scripted worker that goes through the real JobQueue worker verbs and
writes real (small) mp4 files, so the outbox sees exactly what a GPU worker would write.
"""
from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import discord
import imageio_ffmpeg
import numpy as np
import pytest
import yarl
from PIL import Image

from bot.config import BotConfig, DiscordConfig
from bot.discord_app import NO_IMAGE, run_discord
from bot.discord_delivery import spoiler_for
from storage.config import DataDir
from storage.queue import JobQueue, WorkerId
from storage.redact import forget_secret
from tests.fakes.discord_api import FakeDiscord

from .conftest import recorded_job

TOKEN = "MTIzNDU2Nzg5.fake-discord.token-for-tests"
OWNER, STRANGER = 1001, 2002


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture
async def fake(monkeypatch) -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(token=TOKEN) as fake:
        monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
        # discord.Client connects to a fixed gateway URL; take it from the fake's /gateway/bot
        # exactly as the sharded client would.
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{fake.api_base}/gateway/bot", headers={"Authorization": f"Bot {TOKEN}"}) as r:
                url = (await r.json())["url"]
        monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(url))
        yield fake
    forget_secret(TOKEN)


@pytest.fixture
def bot_config() -> BotConfig:
    return BotConfig(admins=frozenset({"9009"}), max_active_jobs=3, poll_interval_s=0.05)


def discord_config(**changes) -> DiscordConfig:
    return DiscordConfig(**{"token": TOKEN, "guild_id": None, "edit_interval_s": 0.2, **changes})


@asynccontextmanager
async def running_bot(fake: FakeDiscord, queue: JobQueue, data_dir: DataDir, bot_config: BotConfig,
                      config: DiscordConfig | None = None) -> AsyncIterator[asyncio.Event]:
    """Run `run_discord` until the block ends; yields its stop event once the gateway is up."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_discord(config or discord_config(), bot_config, queue, data_dir, stop))
    await fake.wait_for(lambda: fake.connected and fake.commands or task.done())
    if task.done():
        task.result()  # startup failed: raise its error here
    await asyncio.sleep(0.05)  # let the client read READY before interactions arrive
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        fake._sockets.clear()


# -- media helpers -----------------------------------------------------------------------------
def photo_bytes(size: tuple[int, int] = (96, 80)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def write_mp4(path: Path, num_frames: int, size: tuple[int, int] = (64, 48), fps: int = 8, *,
              noise: bool = False, quality: float = 5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(num_frames)
    writer = imageio_ffmpeg.write_frames(str(path), size, fps=fps, quality=quality, macro_block_size=8)
    writer.send(None)
    for i in range(num_frames):
        if noise:
            frame = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        else:
            frame = np.full((size[1], size[0], 3), (i * 20) % 255, dtype=np.uint8)
        writer.send(frame)
    writer.close()
    return path


def decoded_frames(data: bytes, tmp_path: Path) -> int:
    path = tmp_path / f"check_{len(data)}.mp4"
    path.write_bytes(data)
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    return frames


async def scripted_worker(queue: JobQueue, data_dir: DataDir, *, num_steps: int = 2, frames: int = 8,
                          size: tuple[int, int] = (64, 48), noise: bool = False, quality: float = 5,
                          step_delay: float = 0.0) -> int:
    """Run the oldest queued job like the GPU worker would: progress, segments, the story. Returns its id."""
    worker = WorkerId.current()
    await queue.worker_seen(worker, "scripted")
    job = await queue.claim(worker)
    assert job is not None, "nothing queued"
    for index, prompt in enumerate(job.prompts):
        for step in range(1, num_steps + 1):
            await queue.record_progress(job.id, worker, {
                "segment": index, "num_segments": job.num_segments, "step": step, "num_steps": num_steps,
                "eta_s": 5.0})
            await asyncio.sleep(step_delay)  # like a real denoising step, so progress edits get shown
        video = write_mp4(data_dir.segment_video(job.id, index), frames, size, noise=noise, quality=quality)
        await queue.record_segment(job.id, worker, index=index, prompt=prompt, video_path=video, carry_path=None,
                                   num_frames=frames, duration_s=frames / 8, gen_seconds=0.1)
    total = frames * job.num_segments
    final = write_mp4(data_dir.story_video(job.id), total, size, noise=noise, quality=quality)
    await queue.complete(job.id, worker, final, {"num_segments": job.num_segments, "duration_s": total / 8,
                                                 "num_frames": total})
    return job.id


async def send_story(fake: FakeDiscord, prompts: str | None, *, user: int = OWNER, image: bytes | None = None,
                     filename: str = "cat.png", content_type: str | None = "image/png",
                     seed: int | None = None) -> dict:
    options: dict = {}
    attachments = None
    if prompts is not None:
        options["prompts"] = prompts
    if image is not None:
        options["image"] = None
        attachments = {"image": fake.add_attachment(filename, image, content_type)}
    if seed is not None:
        options["seed"] = seed
    return await fake.send_interaction(fake.slash("story", user, options, attachments=attachments))


async def reply_of(fake: FakeDiscord, interaction: dict) -> str:
    """The text the bot finally showed for an interaction (edited deferred reply or direct reply)."""
    def answered() -> bool:
        msgs = fake.followups_for(interaction)
        return any(m.content for m in msgs) or any(c.type == 4 for c in fake.callbacks_for(interaction))
    await fake.wait_for(answered)
    for c in fake.callbacks_for(interaction):
        if c.type == 4:
            return c.data["content"]
    return next(m.content for m in fake.followups_for(interaction) if m.content)


def status_message(fake: FakeDiscord, job_id: int):
    for m in fake.channel_messages():
        if m.content.startswith(f"Job #{job_id}"):
            return m
    return None


def custom_ids(message) -> list[str]:
    return [c["custom_id"] for row in message.components for c in row["components"]]


# -- tests -------------------------------------------------------------------------------------
async def test_story_happy_path(fake, queue, data_dir, bot_config, tmp_path):
    async with running_bot(fake, queue, data_dir, bot_config):
        interaction = await send_story(fake, "walk | run | fly", image=photo_bytes())
        reply = await reply_of(fake, interaction)
        assert [c.type for c in fake.callbacks_for(interaction)] == [5]  # deferred first
        assert reply.startswith("Queued: job #1, position 1")
        assert "No GPU worker is online" in reply
        await fake.wait_for(lambda: status_message(fake, 1) is not None)
        status = status_message(fake, 1)
        assert custom_ids(status) == ["svibot:cancel:1", "svibot:reroll:1"]
        job = await recorded_job(queue, 1)
        assert job.status_message_id == str(status.id)
        assert job.meta["filesize_limit"] == fake.upload_limit and job.user_id == str(OWNER)

        await scripted_worker(queue, data_dir, step_delay=0.3)
        await fake.wait_for(lambda: len([m for m in fake.channel_messages() if m.uploads]) == 4
                            and status.content.startswith("Job #1: done"))

    videos = [m for m in fake.channel_messages() if m.uploads]
    assert [m.content for m in videos] == ["Segment 1/3: walk", "Segment 2/3: run", "Segment 3/3: fly",
                                           "Your story (3 segments, 3 s)"]
    assert [decoded_frames(m.uploads[0].data, tmp_path) for m in videos] == [8, 8, 8, 24]
    assert all(m.uploads[0].spoiler for m in videos)  # the channel is not age-restricted
    shown = [e["content"] for e in status.edits if "generating" in (e.get("content") or "")]
    assert shown and "segment 1/3, step 1/2" in shown[0]
    assert custom_ids(status) == ["svibot:reroll:1"]  # Cancel is gone once the job is done
    assert not fake.followups_for(interaction)[0].uploads  # nothing went through the webhook
    assert fake.rejected_uploads == []
    assert all(e.delivered_at is not None for e in await queue.events_for_job(1))


async def test_expired_interaction_token_does_not_break_delivery(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        interaction = await send_story(fake, "walk | run", image=photo_bytes())
        await reply_of(fake, interaction)
        await fake.wait_for(lambda: status_message(fake, 1) is not None)
        fake.expire_tokens()  # 15 minutes later: the interaction webhook is dead
        sent_before = len(fake.requests)
        await scripted_worker(queue, data_dir)
        await fake.wait_for(lambda: len([m for m in fake.channel_messages() if m.uploads]) == 3
                            and status_message(fake, 1).content.startswith("Job #1: done"))
    later = fake.requests[sent_before:]
    assert not [r for r in later if r[1].startswith(("/webhooks", "/interactions"))]
    assert all(status < 400 for _, _, status in later)


async def test_status_edit_waits_out_a_429(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        interaction = await send_story(fake, "walk", image=photo_bytes())
        await reply_of(fake, interaction)
        await fake.wait_for(lambda: status_message(fake, 1) is not None)
        fake.rate_limit("PATCH", r"/channels/\d+/messages/\d+", retry_after=0.3)
        await scripted_worker(queue, data_dir)
        await fake.wait_for(lambda: status_message(fake, 1).content.startswith("Job #1: done"))
    patches = [s for m, p, s in fake.requests if m == "PATCH" and p.startswith("/channels/")]
    assert patches[0] == 429 and 200 in patches[1:]


@pytest.mark.parametrize("case, expected", [
    ("not_an_image", "not an image"),
    ("no_attachment", str(NO_IMAGE)),
    ("empty_prompt", "The story is empty"),
    ("too_many_segments", "The story has 11 segments; the limit is 10"),
])
async def test_bad_input_gets_a_specific_reply_and_queues_nothing(fake, queue, data_dir, bot_config, case, expected):
    async with running_bot(fake, queue, data_dir, bot_config):
        if case == "not_an_image":
            interaction = await send_story(fake, "walk", image=b"%PDF-1.4 not a photo", filename="doc.pdf",
                                           content_type="application/pdf")
        elif case == "no_attachment":
            interaction = await send_story(fake, "walk | run")
        elif case == "empty_prompt":
            interaction = await send_story(fake, "   ", image=photo_bytes())
        else:
            interaction = await send_story(fake, " | ".join(["walk"] * 11), image=photo_bytes())
        reply = await reply_of(fake, interaction)
    assert expected in reply
    assert await queue.list_jobs() == []
    assert not [m for m in fake.channel_messages()]


async def test_oversize_segment_is_reencoded_to_fit(fake, queue, data_dir, bot_config, tmp_path):
    fake.upload_limit = 120_000  # the 2 s segment and the 4 s story are ~0.5 and ~1 MB as written
    async with running_bot(fake, queue, data_dir, bot_config):
        await reply_of(fake, await send_story(fake, "walk", image=photo_bytes()))
        await scripted_worker(queue, data_dir, frames=16, size=(160, 128), noise=True, quality=10)
        assert data_dir.segment_video(1, 0).stat().st_size > fake.upload_limit
        await fake.wait_for(lambda: len([m for m in fake.channel_messages() if m.uploads]) == 2)
    videos = [m for m in fake.channel_messages() if m.uploads]
    assert all(len(m.uploads[0].data) <= fake.upload_limit for m in videos)
    assert [decoded_frames(m.uploads[0].data, tmp_path) for m in videos] == [16, 16]
    assert fake.rejected_uploads == []


async def test_video_that_cannot_fit_is_refused_clearly(fake, queue, data_dir, bot_config):
    fake.upload_limit = 4_000  # under 150 kbit/s for 2 s: re-encoding cannot help
    async with running_bot(fake, queue, data_dir, bot_config):
        await reply_of(fake, await send_story(fake, "walk", image=photo_bytes()))
        await scripted_worker(queue, data_dir, frames=16, size=(160, 128), noise=True, quality=10)
        await fake.wait_for(lambda: status_message(fake, 1).content.startswith("Job #1: done"))
    texts = [m.content for m in fake.channel_messages() if "upload limit" in m.content]
    assert len(texts) == 2 and "fewer segments" in texts[0] and texts[0].startswith("Segment 1/1: walk")
    assert not [m for m in fake.channel_messages() if m.uploads]
    assert fake.rejected_uploads == []


async def test_fake_discord_refuses_oversize_uploads_with_413(fake):
    fake.upload_limit = 1_000
    client = discord.Client(intents=discord.Intents.none())
    await client.login(TOKEN)
    try:
        channel = client.get_partial_messageable(fake.channel_id)
        with pytest.raises(discord.HTTPException) as err:
            await channel.send(file=discord.File(io.BytesIO(b"x" * 2_000), filename="big.mp4"))
        assert err.value.status == 413
        await channel.send(file=discord.File(io.BytesIO(b"x" * 500), filename="small.mp4"))
    finally:
        await client.close()
    assert fake.rejected_uploads == [2_000]


async def test_age_restricted_channel_gets_no_spoilers(queue, data_dir, bot_config, monkeypatch):
    async with FakeDiscord(token=TOKEN, nsfw_channel=True) as fake:
        monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
        monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
        async with running_bot(fake, queue, data_dir, bot_config):
            await reply_of(fake, await send_story(fake, "walk", image=photo_bytes()))
            await scripted_worker(queue, data_dir)
            await fake.wait_for(lambda: len([m for m in fake.channel_messages() if m.uploads]) == 2)
        assert not any(m.uploads[0].spoiler for m in fake.channel_messages() if m.uploads)
    forget_secret(TOKEN)


async def test_token_never_reaches_the_logs(fake, queue, data_dir, bot_config, caplog):
    caplog.set_level(logging.DEBUG)
    async with running_bot(fake, queue, data_dir, bot_config):
        logging.getLogger("discord.http").warning("request failed for token %s", TOKEN)
        try:
            raise RuntimeError(f"bad auth {TOKEN}")
        except RuntimeError:
            logging.getLogger("discord.client").exception("boom")
    text = caplog.text + "".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "request failed for token" in text and "bad auth" in text
    assert TOKEN not in text


async def test_status_edits_respect_the_edit_interval(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config, discord_config(edit_interval_s=0.5)):
        await reply_of(fake, await send_story(fake, "walk | run", image=photo_bytes()))
        await fake.wait_for(lambda: status_message(fake, 1) is not None)
        await scripted_worker(queue, data_dir, num_steps=4, step_delay=0.1)
        await fake.wait_for(lambda: status_message(fake, 1).content.startswith("Job #1: done"))
    edits = [t for (m, p, _), t in zip(fake.requests, fake.request_times) if m == "PATCH" and p.startswith("/channels/")]
    assert len(edits) >= 3
    assert min(b - a for a, b in zip(edits, edits[1:])) >= 0.45


async def test_commands_sync_to_the_test_guild_when_one_is_set(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config, discord_config(guild_id=fake.guild_id)):
        pass
    names = {c["name"] for c in fake.commands[str(fake.guild_id)]}
    assert {"story", "status", "cancel", "queue", "help", "Make a story from this image"} <= names
    assert "global" not in fake.commands
    story = next(c for c in fake.commands[str(fake.guild_id)] if c["name"] == "story")
    assert [(o["name"], o.get("required", False)) for o in story["options"]] == [
        ("prompts", True), ("image", False), ("seed", False), ("loop", False), ("color_match", False)]


@pytest.mark.parametrize("mode, nsfw, expected", [
    ("auto", False, True), ("auto", True, False), ("always", True, True), ("never", False, False)])
def test_spoiler_policy(mode, nsfw, expected):
    assert spoiler_for(mode, nsfw) is expected


def test_spoiler_policy_names_a_bad_mode():
    with pytest.raises(ValueError, match="'sometimes'.*auto"):
        spoiler_for("sometimes", False)


async def test_whoami_answers_the_users_channel_and_server_ids(fake, queue, data_dir, bot_config):
    locked = BotConfig(allowed_users=frozenset({"nobody-yet"}), poll_interval_s=0.05)
    async with running_bot(fake, queue, data_dir, locked):
        assert "whoami" in {c["name"] for commands in fake.commands.values() for c in commands}
        interaction = await fake.send_interaction(fake.slash("whoami", STRANGER))
        reply = await reply_of(fake, interaction)
    assert f"Your Discord user id: {STRANGER}" in reply
    assert f"This channel's id: {fake.channel_id}" in reply and f"This server's id: {fake.guild_id}" in reply
    assert [c.data.get("flags") for c in fake.callbacks_for(interaction)] == [64]  # ephemeral: only the asker sees it
