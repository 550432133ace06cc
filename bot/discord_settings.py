"""/settings on Discord: the user's story defaults as persistent buttons on an ephemeral reply.

Custom ids carry the user and the setting (`svibot:set:<user>:<key>`), so `DynamicItem` matches
a press after a restart and nobody can change another user's settings.
"""
from __future__ import annotations

import re
from typing import Any

import discord
from discord import app_commands

from storage.errors import BadSetting
from storage.queue import JobQueue
from storage.user_settings import KEYS, MAX_SEED

from . import settings_texts, user_settings
from .discord_i18n import language
from .i18n import render
from .texts import BUTTON_EXPIRED, DISCORD_CONTENT_CHARS, fit

PLATFORM = "discord"


class SettingButton(discord.ui.DynamicItem[discord.ui.Button],
                    template=r"svibot:set:(?P<user_id>[0-9]+):(?P<key>[a-z_]+)"):
    """One setting of one user; a press advances it and redraws the message."""

    def __init__(self, user_id: int, key: str, value: Any = None, lang: str | None = None) -> None:
        super().__init__(discord.ui.Button(
            label=render(settings_texts.setting_button(key, value), lang) if key in settings_texts.SETTING_NAMES
            else key,
            style=discord.ButtonStyle.secondary, custom_id=f"svibot:set:{user_id}:{key}"))
        self.user_id = user_id
        self.key = key

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> "SettingButton":
        return cls(int(match["user_id"]), match["key"])

    async def callback(self, interaction: discord.Interaction) -> None:
        lang = language(interaction)
        if interaction.user.id != self.user_id:
            await interaction.response.send_message(render(settings_texts.NOT_YOUR_SETTINGS, lang), ephemeral=True)
            return
        queue: JobQueue = interaction.client.queue  # type: ignore[attr-defined]
        try:
            values = await user_settings.press(queue, PLATFORM, str(self.user_id), self.key)
        except BadSetting:
            await interaction.response.send_message(render(BUTTON_EXPIRED, lang), ephemeral=True)
            return
        await interaction.response.edit_message(
            content=fit(render(settings_texts.settings_text(values), lang), DISCORD_CONTENT_CHARS),
            view=settings_view(self.user_id, values, lang))


def settings_view(user_id: int, values: dict, lang: str | None = None) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for row, key in enumerate(KEYS):
        item = SettingButton(user_id, key, values[key], lang)
        item.row = row
        view.add_item(item)
    return view


@app_commands.describe(seed=app_commands.locale_str(
    "Fix the seed of your new stories (leave out to keep it; the button makes it random)"))
async def settings(interaction: discord.Interaction, seed: app_commands.Range[int, 0, MAX_SEED] | None = None) -> None:
    """Your defaults for new stories: quality, loop, colour match, chaining and seed."""
    queue: JobQueue = interaction.client.queue  # type: ignore[attr-defined]
    user_id = str(interaction.user.id)
    if seed is not None:
        values = await queue.set_user_setting(PLATFORM, user_id, "seed", int(seed))
    else:
        values = await queue.user_settings(PLATFORM, user_id)
    lang = language(interaction)
    await interaction.response.send_message(fit(render(settings_texts.settings_text(values), lang),
                                                DISCORD_CONTENT_CHARS),
                                            view=settings_view(interaction.user.id, values, lang), ephemeral=True)
