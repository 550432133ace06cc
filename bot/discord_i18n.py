"""The Discord bot's languages: which one an interaction is answered in, and the command tree's
descriptions in every language the catalogues have (discord.py's `Translator`, applied at sync).

Command and parameter names and choice values stay as they are in every language: /help and the
error texts quote them (/story prompts: ... image: ..., color_match:anchor), so they must match
what a user sees in the command picker. Descriptions and the context-menu entry are translated.
"""
from __future__ import annotations

import discord
from discord import app_commands
from discord.app_commands import TranslationContextLocation as Where

from .i18n import SOURCE_LANGUAGE, language as catalogue_language, translations


def language(interaction: discord.Interaction) -> str:
    """The language of the user's Discord client (`interaction.locale`, e.g. "de", "pt-BR", "en-US").

    Discord always sends it; the guild's preferred locale only says what the server's community
    reads, while the answer and the job's messages are for the user who asked.
    """
    return str(getattr(interaction.locale, "value", interaction.locale) or SOURCE_LANGUAGE)


class CatalogueTranslator(app_commands.Translator):
    """Looks each `locale_str` of the command tree up in the catalogues; None keeps Discord's default."""

    async def translate(self, string: app_commands.locale_str, locale: discord.Locale,
                        context: app_commands.TranslationContextTypes) -> str | None:
        if context.location in (Where.parameter_name, Where.choice_name, Where.group_name):
            return None
        if context.location is Where.command_name and not isinstance(context.data, app_commands.ContextMenu):
            return None  # slash command names are typed by users and quoted in the texts
        lang = catalogue_language(locale.value)
        if lang == SOURCE_LANGUAGE:
            return None
        translated = translations(lang).gettext(string.message)
        return translated if translated != string.message else None
