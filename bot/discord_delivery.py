"""The outbox's Discord side: status edits, segment and story uploads, all as channel messages.

Everything goes through the bot token (`channel.send`, `Message.edit`), never the interaction
webhook, whose token expires 15 minutes after the command while a story takes longer.
"""
from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import discord

from storage.models import Job
from storage.queue import JobQueue

from . import texts
from .discord_views import status_view
from .i18n import job_language, render
from .outbox import RetryLater, Undeliverable
from .texts import DISCORD_CONTENT_CHARS, fit

log = logging.getLogger(__name__)

PLATFORM = "discord"
DEFAULT_UPLOAD_LIMIT = discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES  # 10 MiB, a guild without boosts
SPOILER_MODES = ("auto", "always", "never")
T = TypeVar("T")


def spoiler_for(mode: str, nsfw_channel: bool) -> bool:
    """Mark results as spoilers unless the channel is age-restricted (mode "auto")."""
    if mode not in SPOILER_MODES:
        raise ValueError(f"spoiler mode is {mode!r}; it must be one of {SPOILER_MODES}")
    return mode == "always" or (mode == "auto" and not nsfw_channel)


class DiscordDeliverer:
    """Implements `bot.outbox.Deliverer` for one discord.py client."""

    platform = PLATFORM

    def __init__(self, client: discord.Client, queue: JobQueue, spoiler: str) -> None:
        self.client = client
        self.queue = queue
        self.spoiler = spoiler
        self._locks: dict[int, asyncio.Lock] = {}

    def status_lock(self, job_id: int) -> asyncio.Lock:
        """Held while a job's status message is created, so the command and the outbox post one."""
        return self._locks.setdefault(job_id, asyncio.Lock())

    def upload_limit(self, job: Job) -> int:
        return int(job.meta.get("filesize_limit") or DEFAULT_UPLOAD_LIMIT)

    def channel(self, job: Job) -> discord.PartialMessageable:
        guild_id = job.meta.get("guild_id")
        return self.client.get_partial_messageable(int(job.chat_id), guild_id=int(guild_id) if guild_id else None)

    async def post_status(self, job: Job, text: str, *, active: bool = True) -> str:
        """Post the job's status message unless it has one; returns its id either way."""
        text = fit(text, DISCORD_CONTENT_CHARS)
        async with self.status_lock(job.id):
            current = await self.queue.get_job(job.id)
            if current.status_message_id is not None:
                return current.status_message_id
            message = await _call(lambda: self.channel(job).send(text, view=self._view(job, active)))
            await self.queue.set_status_message(job.id, str(message.id))
            return str(message.id)

    @staticmethod
    def _view(job: Job, active: bool) -> discord.ui.View:
        return status_view(job.id, active=active, lang=job_language(job))

    def _preview_file(self, job: Job, jpeg: bytes) -> discord.File:
        spoiler = spoiler_for(self.spoiler, bool(job.meta.get("nsfw")))
        return discord.File(io.BytesIO(jpeg), filename=f"preview_{job.id}.jpg", spoiler=spoiler)

    async def show_status(self, job: Job, text: str, *, active: bool, preview: bytes | None = None) -> str:
        """A preview replaces the status message's attachment in the same edit (one request)."""
        text = fit(text, DISCORD_CONTENT_CHARS)
        current = await self.queue.get_job(job.id)
        if current.status_message_id is None:
            return await self.post_status(job, text, active=active)
        partial = self.channel(job).get_partial_message(int(current.status_message_id))
        # `attachments` lists what the message keeps: the new preview only, so the last one goes.
        files = {} if preview is None else {"attachments": [self._preview_file(job, preview)]}
        try:
            await _call(lambda: partial.edit(content=text, view=self._view(job, active), **files))
        except Undeliverable:
            # The status message was deleted: post a fresh one so progress stays visible.
            extra = {} if preview is None else {"file": self._preview_file(job, preview)}
            message = await _call(lambda: self.channel(job).send(
                text, view=self._view(job, active), **extra))
            return str(message.id)
        return current.status_message_id

    async def send_video(self, job: Job, path: Path, caption: str) -> str:
        caption = fit(caption, DISCORD_CONTENT_CHARS)
        spoiler = spoiler_for(self.spoiler, bool(job.meta.get("nsfw")))
        name = f"svibot_{job.id}_{Path(path).stem}.mp4"
        try:
            message = await _call(lambda: self.channel(job).send(
                caption, file=discord.File(path, filename=name, spoiler=spoiler)))
        except discord.HTTPException as err:
            if err.status != 413:
                raise
            # The channel's limit shrank since the job was queued (e.g. the guild lost boosts).
            size = Path(path).stat().st_size
            log.warning("job #%d: %s (%d bytes) refused with 413", job.id, path, size)
            refusal = render(texts.video_too_big_text(size, self.upload_limit(job)), job_language(job))
            return await self.send_text(job, caption + "\n" + refusal)
        return str(message.id)

    async def send_text(self, job: Job, text: str) -> str:
        text = fit(text, DISCORD_CONTENT_CHARS)
        message = await _call(lambda: self.channel(job).send(text))
        return str(message.id)


async def _call(make: Callable[[], Awaitable[T]]) -> T:
    """Run one Discord request, mapping its errors onto the outbox's retry/drop vocabulary.

    discord.py sleeps through short 429s and retries 5xx answers itself; `RateLimited` only comes
    for waits over the client's `max_ratelimit_timeout`.
    """
    try:
        return await make()
    except discord.RateLimited as err:
        raise RetryLater(err.retry_after) from err
    except (discord.NotFound, discord.Forbidden) as err:
        raise Undeliverable(f"Discord refused it: {err}") from err
    except discord.DiscordServerError as err:  # discord.py already retried the 5xx a few times
        raise RetryLater() from err
    except (aiohttp.ClientError, asyncio.TimeoutError) as err:  # a dropped connection or a timeout
        raise RetryLater() from err
