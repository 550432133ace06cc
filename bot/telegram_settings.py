"""/settings on Telegram: the user's story defaults as inline buttons, one per setting.

A button's callback data names the user it belongs to (`set:<user>:<key>`), so in a group one
person's settings message cannot change another's settings.
"""
from __future__ import annotations

import logging

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest
from telegram.ext import ContextTypes

from storage.errors import BadSetting
from storage.user_settings import KEYS

from . import texts, user_settings
from .telegram_handlers import PLATFORM, deps, reply
from .texts import TELEGRAM_CALLBACK_ANSWER_CHARS, TELEGRAM_MESSAGE_CHARS, fit

log = logging.getLogger(__name__)
CALLBACK_PATTERN = r"^set:"


def settings_buttons(user_id: int | str, values: dict) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(texts.setting_button(key, values[key]),
                                                       callback_data=f"set:{user_id}:{key}")] for key in KEYS])


async def settings_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/settings shows the buttons; /settings seed 42 (or loop on, ...) sets one value first."""
    d = deps(context)
    user_id = str(update.effective_user.id)
    try:
        if context.args:
            key, value = user_settings.parse_words(list(context.args))
            values = await d.queue.set_user_setting(PLATFORM, user_id, key, value)
        else:
            values = await d.queue.user_settings(PLATFORM, user_id)
    except BadSetting as err:
        await reply(update.effective_message, str(err))
        return
    await reply(update.effective_message, texts.settings_text(values), reply_markup=settings_buttons(user_id, values))


async def settings_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A press advances one setting and redraws the message; every press is answered once."""
    query = update.callback_query
    parts = (query.data or "").split(":")
    if len(parts) != 3:
        await query.answer("This button is not valid any more.")
        return
    _, owner, key = parts
    if owner != str(query.from_user.id):
        await query.answer(fit(texts.NOT_YOUR_SETTINGS, TELEGRAM_CALLBACK_ANSWER_CHARS), show_alert=True)
        return
    try:
        values = await user_settings.press(deps(context).queue, PLATFORM, owner, key)
    except BadSetting:
        await query.answer("This button is not valid any more.")
        return
    try:
        await query.edit_message_text(fit(texts.settings_text(values), TELEGRAM_MESSAGE_CHARS),
                                      reply_markup=settings_buttons(owner, values))
    except BadRequest as err:  # the message is gone or too old; the setting is stored anyway
        log.info("could not redraw a settings message: %s", err)
    await query.answer(fit(texts.setting_changed(key, values[key]), TELEGRAM_CALLBACK_ANSWER_CHARS))
