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

from . import settings_texts, user_settings
from .i18n import render
from .telegram_handlers import PLATFORM, deps, language, reply
from .texts import BUTTON_EXPIRED, TELEGRAM_CALLBACK_ANSWER_CHARS, TELEGRAM_MESSAGE_CHARS, fit

log = logging.getLogger(__name__)
CALLBACK_PATTERN = r"^set:"


def settings_buttons(user_id: int | str, values: dict, lang: str | None) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(render(settings_texts.setting_button(key, values[key]), lang),
                                                       callback_data=f"set:{user_id}:{key}")] for key in KEYS])


async def settings_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/settings shows the buttons; /settings seed 42 (or loop on, ...) sets one value first."""
    d = deps(context)
    user_id, lang = str(update.effective_user.id), language(update)
    try:
        if context.args:
            key, value = user_settings.parse_words(list(context.args))
            values = await d.queue.set_user_setting(PLATFORM, user_id, key, value)
        else:
            values = await d.queue.user_settings(PLATFORM, user_id)
    except BadSetting as err:
        await reply(update.effective_message, err, lang)
        return
    await reply(update.effective_message, settings_texts.settings_text(values), lang,
                reply_markup=settings_buttons(user_id, values, lang))


async def settings_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A press advances one setting and redraws the message; every press is answered once."""
    query, lang = update.callback_query, language(update)
    parts = (query.data or "").split(":")
    if len(parts) != 3:
        await query.answer(render(BUTTON_EXPIRED, lang))
        return
    _, owner, key = parts
    if owner != str(query.from_user.id):
        await query.answer(fit(render(settings_texts.NOT_YOUR_SETTINGS, lang), TELEGRAM_CALLBACK_ANSWER_CHARS),
                           show_alert=True)
        return
    try:
        values = await user_settings.press(deps(context).queue, PLATFORM, owner, key)
    except BadSetting:
        await query.answer(render(BUTTON_EXPIRED, lang))
        return
    try:
        await query.edit_message_text(fit(render(settings_texts.settings_text(values), lang), TELEGRAM_MESSAGE_CHARS),
                                      reply_markup=settings_buttons(owner, values, lang))
    except BadRequest as err:  # the message is gone or too old; the setting is stored anyway
        log.info("could not redraw a settings message: %s", err)
    await query.answer(fit(render(settings_texts.setting_changed(key, values[key]), lang),
                           TELEGRAM_CALLBACK_ANSWER_CHARS))
