"""The Discord status message's persistent buttons and the "make a story" modal.

Button custom ids carry the job id (`svibot:cancel:<id>`), so `DynamicItem` matches them after a
restart without the bot remembering which messages it sent. Their callbacks call the client.
"""
from __future__ import annotations

import re
from typing import Any, Protocol

import discord

from .forget import CONFIRM_LABEL, KEEP_LABEL
from .i18n import _, render


class StoryActions(Protocol):
    """What the buttons and the modal ask of the client (`discord_app.SviClient` provides it)."""

    async def press_cancel(self, interaction: discord.Interaction, job_id: int) -> None: ...

    async def press_reroll(self, interaction: discord.Interaction, job_id: int) -> None: ...

    async def start_story(self, interaction: discord.Interaction, prompts: str, image: Any, seed: int | None) -> None: ...

    async def on_button_error(self, interaction: discord.Interaction, error: Exception) -> None: ...

    async def press_forget(self, interaction: discord.Interaction, confirmed: bool, user_id: int) -> None: ...


def _actions(interaction: discord.Interaction) -> StoryActions:
    return interaction.client  # type: ignore[return-value]

CANCEL_ID = "svibot:cancel:{job_id}"
REROLL_ID = "svibot:reroll:{job_id}"
PROMPTS_MAX_CHARS = 4000  # Discord's limit for one modal text input
# A button's label only matters where the bot sends it; one matched after a restart keeps the message's.
CANCEL_LABEL = _("Cancel")
REROLL_LABEL = _("Re-roll")
MODAL_TITLE = _("Make a story")
MODAL_LABEL = _("Prompts, one per segment, separated by |")
MODAL_EXAMPLE = _("walk | run | fly")


class CancelButton(discord.ui.DynamicItem[discord.ui.Button], template=r"svibot:cancel:(?P<job_id>[0-9]+)"):
    """❌ Cancel: only the job's owner or an admin may press it (checked by the queue)."""

    def __init__(self, job_id: int, lang: str | None = None) -> None:
        super().__init__(discord.ui.Button(
            label=render(CANCEL_LABEL, lang), emoji="\N{CROSS MARK}", style=discord.ButtonStyle.danger,
            custom_id=CANCEL_ID.format(job_id=job_id)))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> "CancelButton":
        return cls(int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await _actions(interaction).press_cancel(interaction, self.job_id)
        except Exception as err:
            await _actions(interaction).on_button_error(interaction, err)


class RerollButton(discord.ui.DynamicItem[discord.ui.Button], template=r"svibot:reroll:(?P<job_id>[0-9]+)"):
    """🔁 Re-roll: the same photo and prompts again with a new seed, as a new job of the presser."""

    def __init__(self, job_id: int, lang: str | None = None) -> None:
        super().__init__(discord.ui.Button(
            label=render(REROLL_LABEL, lang), emoji="\N{CLOCKWISE RIGHTWARDS AND LEFTWARDS OPEN CIRCLE ARROWS}",
            style=discord.ButtonStyle.secondary, custom_id=REROLL_ID.format(job_id=job_id)))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> "RerollButton":
        return cls(int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await _actions(interaction).press_reroll(interaction, self.job_id)
        except Exception as err:
            await _actions(interaction).on_button_error(interaction, err)


class ForgetButton(discord.ui.DynamicItem[discord.ui.Button],
                   template=r"svibot:forget:(?P<answer>yes|no):(?P<user_id>[0-9]+)"):
    """The /forget question's two buttons; the custom id names the user who asked."""

    def __init__(self, confirmed: bool, user_id: int, label: str = "") -> None:
        super().__init__(discord.ui.Button(
            label=label or render(CONFIRM_LABEL if confirmed else KEEP_LABEL),
            style=discord.ButtonStyle.danger if confirmed else discord.ButtonStyle.secondary,
            custom_id=f"svibot:forget:{'yes' if confirmed else 'no'}:{user_id}"))
        self.confirmed = confirmed
        self.user_id = user_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> "ForgetButton":
        return cls(match["answer"] == "yes", int(match["user_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await _actions(interaction).press_forget(interaction, self.confirmed, self.user_id)
        except Exception as err:
            await _actions(interaction).on_button_error(interaction, err)


def forget_view(user_id: int, confirm_label: str, keep_label: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(ForgetButton(True, user_id, confirm_label))
    view.add_item(ForgetButton(False, user_id, keep_label))
    return view


def status_view(job_id: int, *, active: bool, lang: str | None = None) -> discord.ui.View:
    """Buttons under a job's status message: Cancel while it runs, Re-roll always."""
    view = discord.ui.View(timeout=None)
    if active:
        view.add_item(CancelButton(job_id, lang))
    view.add_item(RerollButton(job_id, lang))
    return view


class StoryModal(discord.ui.Modal):
    """Asks for the prompts when a story starts from an image in the channel (context menu)."""

    def __init__(self, image: discord.Attachment, lang: str | None = None) -> None:
        super().__init__(title=render(MODAL_TITLE, lang), timeout=15 * 60)
        self.prompts: discord.ui.TextInput = discord.ui.TextInput(
            label=render(MODAL_LABEL, lang), style=discord.TextStyle.paragraph,
            placeholder=render(MODAL_EXAMPLE, lang), max_length=PROMPTS_MAX_CHARS)
        self.add_item(self.prompts)
        self.image = image

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await _actions(interaction).start_story(interaction, self.prompts.value, self.image, None)

    async def on_error(self, interaction: discord.Interaction, error: Exception, /) -> None:
        await _actions(interaction).on_button_error(interaction, error)
