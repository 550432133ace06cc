"""The Telegram bot: a photo and "/story a | b | c" in; progress, every segment and the stitched video out.

`run_telegram` is what `svibot serve --telegram` calls; `build_application` wires the handlers.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from telegram import BotCommand, InputMediaPhoto, ReplyParameters, Update
from telegram.error import BadRequest, ChatMigrated, Forbidden, InvalidToken, NetworkError, RetryAfter
from telegram.ext import (
    Application,
    ApplicationBuilder,
    AIORateLimiter,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    TypeHandler,
    filters,
)

from storage.config import DataDir
from storage.errors import TokenRejected
from storage.models import Job
from storage.queue import JobQueue

from . import telegram_handlers as h
from . import telegram_forget, telegram_settings
from storage.redact import add_secret

from .config import BotConfig, TelegramConfig
from .i18n import _, job_language, languages, render
from .outbox import Outbox, OutboxConfig, RetryLater, Undeliverable
from . import texts
from .texts import TELEGRAM_CAPTION_CHARS, TELEGRAM_MESSAGE_CHARS, fit

log = logging.getLogger(__name__)

COMMANDS = [
    ("story", _("make a video story from a photo: /story a | b | c")),
    ("status", _("your jobs, queue position and ETA")),
    ("cancel", _("cancel your job: /cancel [job]")),
    ("settings", _("your defaults: quality, loop, colour match, chaining, seed")),
    ("help", _("how to use the bot, limits and queue length")),
    ("forget", _("delete all your jobs, photos and videos now")),
    ("queue", _("the whole queue (admins)")),
    ("stats", _("usage of the last 7 days (admins)")),
    ("whoami", _("your user id and this chat's id")),
]


def bot_commands(lang: str | None = None) -> list[BotCommand]:
    """The command menu in one language; Telegram shows each user the list for their app's language."""
    return [BotCommand(name, render(description, lang)) for name, description in COMMANDS]
UPLOAD_TIMEOUT_S = 600.0  # a 50 MB upload on a slow Colab uplink takes minutes
RATE_LIMIT_RETRIES = 2  # 429s that PTB waits out per request before the outbox takes over
TOKEN_REJECTED = "the Telegram token was rejected; check TELEGRAM_BOT_TOKEN"


class TelegramDeliverer:
    """The outbox's view of Telegram: edit status messages, upload videos, post texts."""

    platform = h.PLATFORM

    def __init__(self, bot, config: TelegramConfig) -> None:
        self.bot = bot
        self.config = config
        # job id -> its live preview message, edited in place. Kept in memory: after a restart a
        # running job's next preview posts a fresh message.
        self._previews: dict[int, int] = {}

    def upload_limit(self, job: Job) -> int:
        return self.config.upload_limit_bytes

    async def _call(self, make):
        """Run one Bot API call, turning Telegram's errors into the outbox's retry/drop signals."""
        try:
            return await make()
        except RetryAfter as err:
            raise RetryLater(h.retry_seconds(err)) from err
        except (Forbidden, ChatMigrated) as err:  # blocked by the user, removed from the chat, chat moved
            raise Undeliverable(str(err)) from err
        except BadRequest as err:
            if "not modified" in str(err).lower():
                raise
            raise Undeliverable(str(err)) from err  # asking again would get the same answer
        except NetworkError as err:
            if "too large" in str(err).lower():  # HTTP 413: the upload limit is set above the server's
                raise Undeliverable(str(err)) from err
            raise RetryLater() from err  # 5xx, timeouts and dropped connections: back off, try again

    async def show_status(self, job: Job, text: str, *, active: bool, preview: bytes | None = None) -> str:
        message_id = await self._show_text(job, text, active=active)
        if preview is not None:
            await self._show_preview(job, int(message_id), preview)
        if not active:
            self._previews.pop(job.id, None)  # the last preview stays in the chat, no longer edited
        return message_id

    async def _show_preview(self, job: Job, status_message_id: int, jpeg: bytes) -> None:
        """One photo message under the status message, its image replaced by editMessageMedia."""
        name = f"preview_{job.id}.jpg"
        caption = fit(render(texts.preview_caption(job.id), job_language(job)), TELEGRAM_CAPTION_CHARS)
        known = self._previews.get(job.id)
        if known is not None:
            try:
                await self._call(lambda: self.bot.edit_message_media(
                    InputMediaPhoto(jpeg, caption=caption, filename=name), chat_id=int(job.chat_id),
                    message_id=known))
                return
            except BadRequest:  # "not modified": this very image is already shown
                return
            except Undeliverable as err:
                log.info("job #%d: cannot edit preview message %d (%s); posting a new one", job.id, known, err)
        message = await self._call(lambda: self.bot.send_photo(
            int(job.chat_id), photo=jpeg, filename=name, caption=caption,
            reply_parameters=ReplyParameters(status_message_id, allow_sending_without_reply=True)))
        self._previews[job.id] = message.message_id

    async def _show_text(self, job: Job, text: str, *, active: bool) -> str:
        text = fit(text, TELEGRAM_MESSAGE_CHARS)
        markup = h.job_buttons(job.id, active=active, lang=job_language(job))
        if job.status_message_id is not None:
            try:
                await self._call(lambda: self.bot.edit_message_text(
                    text, chat_id=int(job.chat_id), message_id=int(job.status_message_id), reply_markup=markup))
                return job.status_message_id
            except BadRequest:  # only "message is not modified" gets here: the text is already shown
                return job.status_message_id
            except Undeliverable as err:
                # The status message was deleted or can no longer be edited: post a fresh one.
                log.info("job #%d: cannot edit status message %s (%s); posting a new one",
                         job.id, job.status_message_id, err)
        message = await self._call(lambda: self.bot.send_message(int(job.chat_id), text, reply_markup=markup))
        return str(message.message_id)

    async def send_video(self, job: Job, path: Path, caption: str) -> str:
        caption = fit(caption, TELEGRAM_CAPTION_CHARS)

        def upload():
            return self.bot.send_video(
                int(job.chat_id), video=path.read_bytes(), filename=path.name, caption=caption,
                supports_streaming=True, read_timeout=UPLOAD_TIMEOUT_S, write_timeout=UPLOAD_TIMEOUT_S)
        message = await self._call(upload)
        return str(message.message_id)

    async def send_text(self, job: Job, text: str) -> str:
        text = fit(text, TELEGRAM_MESSAGE_CHARS)
        message = await self._call(lambda: self.bot.send_message(int(job.chat_id), text))
        return str(message.message_id)


def build_application(config: TelegramConfig, bot_config: BotConfig, queue: JobQueue,
                      data_dir: DataDir) -> Application:
    """The PTB Application with every handler wired, pointed at `config.api_base_url`."""
    app = (
        ApplicationBuilder()
        .token(config.token)
        .base_url(config.bot_url)
        .base_file_url(config.file_url)
        .get_updates_read_timeout(config.poll_timeout_s + 5.0)
        .media_write_timeout(UPLOAD_TIMEOUT_S)
        .job_queue(None)  # scheduling lives in the storage queue, not in PTB
        # Telegram's limits (30 messages/s overall, 20/min per group) are kept before sending, and a
        # 429 is sat out and retried by PTB itself; one that still fails reaches the outbox.
        .rate_limiter(AIORateLimiter(max_retries=RATE_LIMIT_RETRIES))
        .build()
    )
    app.bot_data[h.DEPS_KEY] = h.TelegramDeps(
        config=config, bot_config=bot_config, queue=queue, data_dir=data_dir,
        photos=h.PhotoMemory(ttl_s=config.photo_memory_s))
    photo_or_file = filters.PHOTO | filters.Document.ALL
    story_caption = filters.CaptionRegex(h.STORY_COMMAND.pattern)
    app.add_handler(TypeHandler(Update, h.gate), group=-1)  # the allowlists, before any other handler
    app.add_handler(CommandHandler(["start", "help"], h.help_command))
    app.add_handler(CommandHandler("story", h.story_command))
    app.add_handler(CommandHandler("status", h.status_command))
    app.add_handler(CommandHandler("cancel", h.cancel_command))
    app.add_handler(CommandHandler("queue", h.queue_command))
    app.add_handler(CommandHandler("stats", h.stats_command))
    app.add_handler(CommandHandler("settings", telegram_settings.settings_command))
    app.add_handler(CommandHandler("whoami", h.whoami_command))
    app.add_handler(MessageHandler(photo_or_file & story_caption, h.story_from_caption))
    app.add_handler(MessageHandler(photo_or_file & ~story_caption, h.remember_photo))
    app.add_handler(CallbackQueryHandler(h.button, pattern=r"^(cancel|reroll):"))
    app.add_handler(CallbackQueryHandler(telegram_settings.settings_button, pattern=telegram_settings.CALLBACK_PATTERN))
    app.add_handler(CommandHandler("forget", telegram_forget.forget_command))
    app.add_handler(CallbackQueryHandler(telegram_forget.forget_button, pattern=telegram_forget.CALLBACK_PATTERN))
    app.add_error_handler(h.on_error)
    return app


async def run_telegram(config: TelegramConfig, bot_config: BotConfig, queue: JobQueue, data_dir: DataDir,
                       stop: asyncio.Event) -> None:
    """Poll Telegram for updates and deliver the outbox until `stop` is set, then shut down cleanly.

    A token Telegram refuses raises TokenRejected, whose message names the variable, not the token.
    """
    add_secret(config.token)
    app = build_application(config, bot_config, queue, data_dir)
    outbox = Outbox(queue, TelegramDeliverer(app.bot, config), OutboxConfig(
        edit_interval_s=config.edit_interval_s, poll_interval_s=bot_config.poll_interval_s,
        shutdown_grace_s=bot_config.shutdown_grace_s, retry_base_s=bot_config.retry_base_s))
    rejected = False
    try:
        async with app:  # initialize() checks the token with getMe; shutdown() on exit
            await app.start()
            await app.updater.start_polling(
                timeout=int(config.poll_timeout_s), allowed_updates=["message", "callback_query"])
            try:  # the default (English) menu, then one per catalogue for users of that language
                await app.bot.set_my_commands(bot_commands())
                for lang in languages()[1:]:
                    if len(lang) == 2:  # Telegram takes a two-letter ISO 639-1 code here, not a region
                        await app.bot.set_my_commands(bot_commands(lang), language_code=lang)
            except NetworkError:  # a cosmetic menu; the bot works without it
                log.warning("could not set the command menu", exc_info=True)
            log.info("telegram bot @%s is polling %s", app.bot.username, config.api_base_url)
            try:
                await outbox.run(stop)
            finally:
                await app.updater.stop()
                await app.stop()
    except InvalidToken:  # PTB's message quotes the token itself
        rejected = True
    if rejected:  # raised outside the except block, so no traceback carries PTB's exception along
        raise TokenRejected(TOKEN_REJECTED)
