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
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.error import BadRequest, RetryAfter, TelegramError
from telegram.ext import ApplicationHandlerStop, ContextTypes
from telegram.warnings import PTBDeprecationWarning

from storage.config import DataDir
from storage.errors import InputError, PhotoTooLarge
from storage.queue import JobQueue
from storage.validate import check_photo_size

from . import intake, texts
from .access import AccessDenied, check_allowed
from .config import BotConfig, TelegramConfig
from .i18n import _, job_meta, render
from .outbox import STATUS_REPLY_META
from .texts import TELEGRAM_CALLBACK_ANSWER_CHARS, TELEGRAM_MESSAGE_CHARS, fit

log = logging.getLogger(__name__)

PLATFORM = "telegram"
DEPS_KEY = "svibot"
MAX_FLOOD_WAIT_S = 30.0  # a handler waits at most this long; the outbox covers longer waits
STORY_COMMAND = re.compile(r"^/story(?:@(\w+))?(?:\s+|$)", re.IGNORECASE)


class DownloadFailed(InputError):
    """Telegram would not hand over the file, even after retries."""

    code = "download_failed"


@dataclass(frozen=True)
class PhotoRef:
    """A photo or file seen in a chat, not downloaded yet; its bytes decide whether it is an image."""

    file_id: str
    file_size: int | None


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


CANCEL_LABEL = _("❌ Cancel")
REROLL_LABEL = _("🔁 Re-roll")


def language(update: Update) -> str | None:
    """The language the user's Telegram app is set to (an IETF tag such as "de" or "pt-br"), if it says."""
    user = update.effective_user
    return user.language_code if user is not None else None


def job_buttons(job_id: int, *, active: bool, lang: str | None = None) -> InlineKeyboardMarkup:
    """❌ Cancel while the job may still run, 🔁 Re-roll always."""
    row = [InlineKeyboardButton(render(REROLL_LABEL, lang), callback_data=f"reroll:{job_id}")]
    if active:
        row.insert(0, InlineKeyboardButton(render(CANCEL_LABEL, lang), callback_data=f"cancel:{job_id}"))
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
    """The photo in a message: the largest size of a photo, or any document (its bytes are checked later)."""
    if message is None:
        return None
    if message.photo:
        best = message.photo[-1]  # sizes come smallest first
        return PhotoRef(best.file_id, best.file_size)
    if message.document:
        return PhotoRef(message.document.file_id, message.document.file_size)
    return None


async def reply(message: Message, text: Any, lang: str | None, **kwargs: Any) -> Message:
    """Reply with `text` (a `Text`, a refusal or an input error) in `lang`, cut to Telegram's message limit."""
    return await message.reply_text(fit(render(text, lang), TELEGRAM_MESSAGE_CHARS), **kwargs)


async def _download(context: ContextTypes.DEFAULT_TYPE, ref: PhotoRef) -> bytes:
    """Check the size Telegram reports, then fetch the bytes, retrying failures with backoff.

    Raises PhotoTooLarge, or DownloadFailed once every attempt failed.
    """
    d = deps(context)
    limits = d.bot_config.limits
    if ref.file_size is not None:
        check_photo_size(ref.file_size, limits)
    delays = d.config.file_retry_s
    attempts = len(delays) + 1
    for attempt in range(1, attempts + 1):
        try:
            tg_file = await context.bot.get_file(ref.file_id)
            if tg_file.file_size is not None:
                check_photo_size(tg_file.file_size, limits)
            return bytes(await tg_file.download_as_bytearray())
        except BadRequest as err:
            if "too big" in str(err).lower():  # over what the Bot API hands to bots; asking again won't help
                raise PhotoTooLarge(texts.TELEGRAM_FILE_TOO_BIG) from None
            failure: TelegramError = err
        except TelegramError as err:  # 5xx, timeouts, 429, a 404 on the file URL (PTB names it InvalidToken)
            failure = err
        if attempt == attempts:
            break
        wait = delays[attempt - 1]
        if isinstance(failure, RetryAfter):
            wait = max(wait, min(retry_seconds(failure), MAX_FLOOD_WAIT_S))
        log.warning("downloading file %s failed (attempt %d of %d): %s; retrying in %.1f s",
                    ref.file_id, attempt, attempts, failure, wait)
        await asyncio.sleep(wait)
    log.error("downloading file %s failed %d times, last: %s", ref.file_id, attempts, failure)
    raise DownloadFailed(texts.download_failed_text(attempts))


async def _start_story(update: Update, context: ContextTypes.DEFAULT_TYPE, text: str, ref: PhotoRef | None) -> None:
    """Checks, download, enqueue, then the queued reply that becomes the job's status message."""
    d = deps(context)
    message, user, chat = update.effective_message, update.effective_user, update.effective_chat
    lang = language(update)
    try:
        if ref is None:
            await reply(message, texts.NO_PHOTO, lang)
            return
        await intake.preflight(d.queue, d.bot_config, platform=PLATFORM, user_id=str(user.id),
                               chat_id=str(chat.id), text=text)
        photo = await _download(context, ref)
        queued = await intake.start_story(d.queue, d.bot_config, intake.StoryRequest(
            platform=PLATFORM, chat_id=str(chat.id), user_id=str(user.id), text=text, photo=photo,
            meta={STATUS_REPLY_META: True, "message_id": message.message_id, **job_meta(lang)},
        ))
    except (AccessDenied, InputError) as err:
        await reply(message, err, lang)
        return
    d.photos.forget(chat.id)
    sent = await send_patiently(
        lambda: reply(message, queued.text, lang, reply_markup=job_buttons(queued.job.id, active=True, lang=lang)))
    await d.queue.set_status_message(queued.job.id, str(sent.message_id))


async def gate(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Runs before every handler: the allowlists apply to every command, message and button.

    A refused command or button is answered; other messages from outside are ignored.
    """
    d = deps(context)
    user, chat = update.effective_user, update.effective_chat
    if user is None:  # channel posts and other updates without a person behind them
        raise ApplicationHandlerStop
    if _command_name(update.effective_message) in texts.OPEN_COMMANDS:
        return
    try:
        check_allowed(d.bot_config, user.id, chat.id if chat is not None else ())
    except AccessDenied as err:
        if update.callback_query is not None:
            await update.callback_query.answer(fit(render(err, language(update)), TELEGRAM_CALLBACK_ANSWER_CHARS),
                                               show_alert=True)
        elif update.effective_message is not None and _is_command(update.effective_message):
            await reply(update.effective_message, err, language(update))
        raise ApplicationHandlerStop from None


def _is_command(message: Message) -> bool:
    return (message.text or message.caption or "").startswith("/")


def _command_name(message: Message | None) -> str:
    """"whoami" for "/whoami" or "/whoami@my_bot"; "" for anything that is not a command."""
    text = (message.text or "") if message is not None else ""
    return text.split()[0][1:].split("@")[0].lower() if text.startswith("/") and text.strip() != "/" else ""


async def story_from_caption(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A photo or file sent with the caption "/story a | b | c"."""
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
    await reply(update.effective_message, await intake.help_text(d.queue, d.bot_config), language(update))


async def whoami_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/whoami: the user's and the chat's ids. Answered for everyone: it shows only the asker's own ids,
    and it is how an operator finds the id to allow."""
    user, chat = update.effective_user, update.effective_chat
    await reply(update.effective_message, texts.whoami_text("Telegram", user.id, [("chat", chat.id)]), language(update))


async def status_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/status: your jobs with state, position and ETA, and whether a worker is online."""
    d = deps(context)
    text = await intake.status(d.queue, platform=PLATFORM, user_id=str(update.effective_user.id))
    await reply(update.effective_message, text, language(update))


async def cancel_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/cancel [job]: cancel your queued or running job (admins: any job)."""
    d = deps(context)
    message = update.effective_message
    job_id = None
    if context.args:
        if not context.args[0].lstrip("#").isdigit():
            await reply(message, texts.bad_job_id_text(context.args[0]), language(update))
            return
        job_id = int(context.args[0].lstrip("#"))
    try:
        text = await intake.cancel(d.queue, d.bot_config, platform=PLATFORM,
                                   user_id=str(update.effective_user.id), job_id=job_id)
    except AccessDenied as err:
        text = err
    await reply(message, text, language(update))


async def _admin_reply(update: Update, context: ContextTypes.DEFAULT_TYPE, report) -> None:
    """Reply with an admins-only report (`intake.queue_overview`, `intake.usage_stats`), or the refusal."""
    d = deps(context)
    try:
        text = await report(d.queue, d.bot_config, user_id=str(update.effective_user.id))
    except AccessDenied as err:
        text = err
    await reply(update.effective_message, text, language(update))


async def queue_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/queue: the whole queue, admins only."""
    await _admin_reply(update, context, intake.queue_overview)


async def stats_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/stats: usage of the last 7 days, admins only."""
    await _admin_reply(update, context, intake.usage_stats)


async def button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The ❌ Cancel and 🔁 Re-roll buttons under a status message. Every press is answered once."""
    query = update.callback_query
    try:
        answer, alert = await _press(update, context)
    except (AccessDenied, InputError) as err:
        answer, alert = err, True
    except Exception:
        log.exception("button %r failed", query.data)
        answer, alert = texts.INTERNAL_ERROR, True
    await query.answer(fit(render(answer, language(update)), TELEGRAM_CALLBACK_ANSWER_CHARS), show_alert=alert)


async def _press(update: Update, context: ContextTypes.DEFAULT_TYPE) -> tuple[Any, bool]:
    """Act on a button press; returns (answer, show as alert)."""
    d = deps(context)
    query, chat, lang = update.callback_query, update.effective_chat, language(update)
    action, _sep, raw_id = (query.data or "").partition(":")
    if action not in ("cancel", "reroll") or not raw_id.isdigit() or chat is None:
        return texts.BUTTON_EXPIRED, False
    user_id, chat_id = str(query.from_user.id), str(chat.id)
    if action == "cancel":
        return await intake.cancel(d.queue, d.bot_config, platform=PLATFORM, user_id=user_id,
                                   job_id=int(raw_id), chat_id=chat_id), False
    queued = await intake.reroll(d.queue, d.bot_config, int(raw_id), platform=PLATFORM, user_id=user_id,
                                 chat_id=chat_id, meta={STATUS_REPLY_META: True, **job_meta(lang)})
    sent = await send_patiently(lambda: context.bot.send_message(
        chat.id, fit(render(queued.text, lang), TELEGRAM_MESSAGE_CHARS),
        reply_markup=job_buttons(queued.job.id, active=True, lang=lang)))
    await d.queue.set_status_message(queued.job.id, str(sent.message_id))
    return texts.requeued_text(queued.job.id), False


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log the error with its traceback, then tell the user once."""
    log.error("error while handling an update", exc_info=context.error)
    if isinstance(update, Update) and update.effective_message is not None:
        try:
            await reply(update.effective_message, texts.INTERNAL_ERROR, language(update))
        except Exception:  # the chat may be unreachable; the error is already logged
            log.warning("could not tell the user about the error", exc_info=True)
