"""/forget on Telegram: the question with its two buttons, and what a press does.

A button's callback data names the user who asked (`forget:yes:<user>`), so only they can answer,
also after a restart.
"""
from __future__ import annotations

import logging

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest
from telegram.ext import ContextTypes

from . import forget
from .i18n import render
from .telegram_handlers import PLATFORM, deps, language, reply
from .texts import TELEGRAM_MESSAGE_CHARS, fit

log = logging.getLogger(__name__)
CALLBACK_PATTERN = r"^forget:"


async def forget_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/forget: ask before deleting every job and file of the asking user (the buttons do it)."""
    d = deps(context)
    user_id, lang = update.effective_user.id, language(update)
    text, anything = await forget.ask(d.queue, platform=PLATFORM, user_id=str(user_id))
    markup = InlineKeyboardMarkup([[
        InlineKeyboardButton(render(forget.CONFIRM_LABEL, lang), callback_data=f"forget:yes:{user_id}"),
        InlineKeyboardButton(render(forget.KEEP_LABEL, lang), callback_data=f"forget:no:{user_id}")]]) \
        if anything else None
    await reply(update.effective_message, text, lang, reply_markup=markup)


async def forget_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The /forget question's buttons: only the user who asked may answer; the question becomes the result."""
    d = deps(context)
    query = update.callback_query
    _kind, answer, owner = (query.data or "").split(":", 2) if (query.data or "").count(":") == 2 else ("", "", "")
    if str(query.from_user.id) != owner:
        await query.answer(render(forget.NOT_YOURS, language(update)), show_alert=True)
        return
    if answer == "yes":
        text = await forget.forget(d.queue, platform=PLATFORM, user_id=owner)
        d.photos.forget(update.effective_chat.id)  # the chat's remembered photo, if any
    else:
        text = forget.KEPT
    await query.answer()
    if query.message is not None:
        try:  # the question turns into the outcome, without buttons, so it cannot be pressed twice
            await query.edit_message_text(fit(render(text, language(update)), TELEGRAM_MESSAGE_CHARS))
        except BadRequest as err:
            log.info("could not edit the /forget question: %s", err)
