"""The Telegram bot's update handlers: one small typed handler per command, plus photos and buttons.

They read `TelegramDeps` from `application.bot_data` and call the shared use cases in bot.intake.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import PurePath

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.error import RetryAfter
from telegram.ext import ContextTypes
from telegram.warnings import PTBDeprecationWarning

from storage.config import DataDir
from storage.errors import InputError, NotAnImage
from storage.queue import JobQueue
from storage.validate import check_photo_size

from . import intake, texts
from .access import AccessDenied, check_allowed
from .config import BotConfig, TelegramConfig
from .outbox import STATUS_REPLY_META

log = logging.getLogger(__name__)

PLATFORM = "telegram"
DEPS_KEY = "svibot"
MAX_FLOOD_WAIT_S = 30.0  # a handler waits at most this long; the outbox covers longer waits
STORY_COMMAND = re.compile(r"^/story(?:@(\w+))?(?:\s+|$)", re.IGNORECASE)


@dataclass(frozen=True)
class PhotoRef:
    """A photo seen in a chat, not downloaded yet."""

    file_id: str
    file_size: int | None
    suffix: str
    mime_type: str | None = None
    is_image: bool = True


@dataclass
class PhotoMemory:
    """The last photo per chat, so "send a photo, then /story ..." works for a while."""

    ttl_s: float
    _photos: dict[int, tuple[PhotoRef, float]] = field(default_factory=dict)

    def remember(self, chat_id: int, ref: PhotoRef, now: float | None = None) -> None:
        self._photos[chat_id] = (ref, time.monotonic() if now is None else now)

    def recall(self, chat_id: int, now: float | None = None) -> PhotoRef | None:
        item = self._photos.get(chat_id)
        now = time.monotonic() if now is None else now
        if item is None or now - item[1] > self.ttl_s:
            self._photos.pop(chat_id, None)
            return None
        return item[0]

    def forget(self, chat_id: int) -> None:
        self._photos.pop(chat_id, None)


@dataclass(frozen=True)
class TelegramDeps:
    """What the handlers need, built once by `build_application`."""

    config: TelegramConfig
    bot_config: BotConfig
    queue: JobQueue
    data_dir: DataDir
    photos: PhotoMemory


def deps(context: ContextTypes.DEFAULT_TYPE) -> TelegramDeps:
    return context.application.bot_data[DEPS_KEY]


def job_buttons(job_id: int, *, active: bool) -> InlineKeyboardMarkup:
    """❌ Cancel while the job may still run, 🔁 Re-roll always."""
    row = [InlineKeyboardButton("🔁 Re-roll", callback_data=f"reroll:{job_id}")]
    if active:
        row.insert(0, InlineKeyboardButton("❌ Cancel", callback_data=f"cancel:{job_id}"))
    return InlineKeyboardMarkup([row])


def retry_seconds(err: RetryAfter) -> float:
    """How long Telegram asked us to wait, as seconds."""
    with warnings.catch_warnings():  # PTB 22 warns that the int form will become a timedelta
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        retry_after = err.retry_after
    return retry_after.total_seconds() if isinstance(retry_after, timedelta) else float(retry_after)


async def send_patiently(send: Callable[[], Awaitable[Message]], attempts: int = 3) -> Message:
    """Send a message that must not be lost (the "Queued" reply), waiting out flood control."""
    for attempt in range(attempts):
        try:
            return await send()
        except RetryAfter as err:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(min(retry_seconds(err), MAX_FLOOD_WAIT_S))
    raise AssertionError("unreachable")


def story_text(text: str | None, bot_username: str | None) -> str | None:
    """The prompts after "/story" or "/story@Bot"; None if the text is not a /story for this bot."""
    match = STORY_COMMAND.match(text or "")
    if match is None:
        return None
    if match.group(1) and bot_username and match.group(1).lower() != bot_username.lower():
        return None  # addressed to another bot in the same group
    return (text or "")[match.end():]


def photo_ref(message: Message | None) -> PhotoRef | None:
    """The photo in a message: the largest size of a photo, or a document (checked later for MIME)."""
    if message is None:
        return None
    if message.photo:
        best = message.photo[-1]  # sizes come smallest first
        return PhotoRef(best.file_id, best.file_size, ".jpg", "image/jpeg")
    if message.document:
        doc = message.document
        suffix = PurePath(doc.file_name or "").suffix.lower() or ".img"
        is_image = bool(doc.mime_type and doc.mime_type.startswith("image/"))
        return PhotoRef(doc.file_id, doc.file_size, suffix, doc.mime_type, is_image)
    return None


async def _download(context: ContextTypes.DEFAULT_TYPE, ref: PhotoRef) -> bytes:
    """Check the size Telegram reports before downloading, then fetch the bytes."""
    d = deps(context)
    if not ref.is_image:
        raise NotAnImage(texts.not_an_image_text(ref.mime_type))
    limits = d.bot_config.limits
    if ref.file_size is not None:
        check_photo_size(ref.file_size, limits)
    tg_file = await context.bot.get_file(ref.file_id)
    if tg_file.file_size is not None:
        check_photo_size(tg_file.file_size, limits)
    return bytes(await tg_file.download_as_bytearray())


async def _start_story(update: Update, context: ContextTypes.DEFAULT_TYPE, text: str, ref: PhotoRef | None) -> None:
    """Checks, download, enqueue, then the queued reply that becomes the job's status message."""
    d = deps(context)
    message, user, chat = update.effective_message, update.effective_user, update.effective_chat
    try:
        check_allowed(d.bot_config, user.id, chat.id)
        if ref is None:
            await message.reply_text(texts.NO_PHOTO)
            return
        await intake.preflight(d.queue, d.bot_config, platform=PLATFORM, user_id=str(user.id),
                               chat_id=str(chat.id), text=text)
        photo = await _download(context, ref)
        queued = await intake.start_story(d.queue, d.bot_config, intake.StoryRequest(
            platform=PLATFORM, chat_id=str(chat.id), user_id=str(user.id), text=text, photo=photo,
            photo_suffix=ref.suffix, meta={STATUS_REPLY_META: True, "message_id": message.message_id},
        ))
    except (AccessDenied, InputError) as err:
        await message.reply_text(str(err))
        return
    d.photos.forget(chat.id)
    reply = await send_patiently(
        lambda: message.reply_text(queued.text, reply_markup=job_buttons(queued.job.id, active=True)))
    await d.queue.set_status_message(queued.job.id, str(reply.message_id))


async def story_from_caption(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A photo or image file sent with the caption "/story a | b | c"."""
    message = update.effective_message
    text = story_text(message.caption, context.bot.username)
    if text is None:
        await remember_photo(update, context)
        return
    await _start_story(update, context, text, photo_ref(message))


async def story_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/story a | b | c, as a reply to a photo or after sending one."""
    message = update.effective_message
    text = story_text(message.text, context.bot.username) or ""
    ref = photo_ref(message.reply_to_message) or deps(context).photos.recall(update.effective_chat.id)
    await _start_story(update, context, text, ref)


async def remember_photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Keep the chat's latest photo for a following /story."""
    ref = photo_ref(update.effective_message)
    if ref is not None:
        deps(context).photos.remember(update.effective_chat.id, ref)


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/start and /help: usage, limits and the queue length."""
    d = deps(context)
    await update.effective_message.reply_text(await intake.help_text(d.queue, d.bot_config))


async def status_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/status: your jobs with state, position and ETA, and whether a worker is online."""
    d = deps(context)
    text = await intake.status(d.queue, platform=PLATFORM, user_id=str(update.effective_user.id))
    await update.effective_message.reply_text(text)


async def cancel_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/cancel [job]: cancel your queued or running job (admins: any job)."""
    d = deps(context)
    message = update.effective_message
    job_id = None
    if context.args:
        if not context.args[0].lstrip("#").isdigit():
            await message.reply_text(texts.bad_job_id_text(context.args[0]))
            return
        job_id = int(context.args[0].lstrip("#"))
    try:
        text = await intake.cancel(d.queue, d.bot_config, platform=PLATFORM,
                                   user_id=str(update.effective_user.id), job_id=job_id)
    except AccessDenied as err:
        text = str(err)
    await message.reply_text(text)


async def queue_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/queue: the whole queue, admins only."""
    d = deps(context)
    try:
        text = await intake.queue_overview(d.queue, d.bot_config, user_id=str(update.effective_user.id))
    except AccessDenied as err:
        text = str(err)
    await update.effective_message.reply_text(text)


async def button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The ❌ Cancel and 🔁 Re-roll buttons under a status message."""
    d = deps(context)
    query = update.callback_query
    action, _, raw_id = (query.data or "").partition(":")
    if action not in ("cancel", "reroll") or not raw_id.isdigit():
        await query.answer("This button is not valid any more.")
        return
    user_id, chat_id = str(query.from_user.id), str(update.effective_chat.id)
    try:
        if action == "cancel":
            await query.answer(await intake.cancel(d.queue, d.bot_config, platform=PLATFORM, user_id=user_id,
                                                   job_id=int(raw_id)))
            return
        queued = await intake.reroll(d.queue, d.bot_config, int(raw_id), user_id=user_id, chat_id=chat_id,
                                     meta={STATUS_REPLY_META: True})
    except (AccessDenied, InputError) as err:
        await query.answer(str(err), show_alert=True)
        return
    reply = await send_patiently(lambda: context.bot.send_message(
        update.effective_chat.id, queued.text, reply_markup=job_buttons(queued.job.id, active=True)))
    await d.queue.set_status_message(queued.job.id, str(reply.message_id))
    await query.answer(f"Queued job #{queued.job.id}.")


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log the error with its traceback, then tell the user once."""
    log.error("error while handling an update", exc_info=context.error)
    if isinstance(update, Update) and update.effective_message is not None:
        try:
            await update.effective_message.reply_text(texts.INTERNAL_ERROR)
        except Exception:  # the chat may be unreachable; the error is already logged
            log.warning("could not tell the user about the error", exc_info=True)
