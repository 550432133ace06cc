"""The Discord bot: `/story` with an image, `/status`, `/cancel`, `/queue`, buttons and a context menu.

Start it with `run_discord(...)`; results come back through the storage outbox as channel messages.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

import discord
from discord import app_commands
from discord.app_commands import locale_str

from storage.config import DataDir
from storage.errors import InputError, TokenRejected
from storage.queue import JobQueue
from storage.redact import add_secret
from storage.validate import check_photo_size

from . import forget, intake, texts
from .access import AccessDenied, check_allowed
from .config import BotConfig, DiscordConfig
from .discord_i18n import CatalogueTranslator, language
from .discord_settings import SettingButton, settings as settings_command
from .discord_delivery import DEFAULT_UPLOAD_LIMIT, PLATFORM, DiscordDeliverer
from .discord_views import CancelButton, ForgetButton, RerollButton, StoryModal, forget_view
from .i18n import N_, _, job_meta, render
from .outbox import STATUS_REPLY_META, Outbox, OutboxConfig
from .texts import DISCORD_CONTENT_CHARS, fit

log = logging.getLogger(__name__)

NO_IMAGE = _("Attach a photo to the command: /story prompts:walk | run | fly image:<your photo>")
NO_IMAGE_IN_MESSAGE = _("That message has no image attached; use this on a message with a photo.")
CONTEXT_MENU_NAME = N_("Make a story from this image")  # at most 32 characters, in every language
HOW_TO = [_("Example: /story prompts: a cat walks | the cat runs | the cat flies  image: <your photo>"),
          _('Or right-click a message with a photo: Apps > "{menu}".', menu=_(CONTEXT_MENU_NAME)),
          _("Buttons under the status message cancel the job or re-roll it with a new seed."),
          "",
          _("Options: loop:True, color_match:anchor (or write them before the prompts: "
            "loop: color:anchor walk | run)."),
          *texts.OPTIONS_HELP]
MAX_RATELIMIT_WAIT_S = 30.0  # the smallest value discord.py accepts
TOKEN_REJECTED = "the Discord token was rejected; check DISCORD_BOT_TOKEN"
REPLY_FAILED = _("Sorry, I could not show the answer here. Please try again.")


class SviClient(discord.Client):
    """A discord.py client carrying the queue and settings its commands and buttons need."""

    def __init__(self, config: DiscordConfig, bot_config: BotConfig, queue: JobQueue, data_dir: DataDir) -> None:
        # Slash commands, buttons and modals arrive as interactions; the guilds intent keeps the
        # channel cache that tells an age-restricted channel apart. No privileged intents needed.
        # Nothing the bot posts pings anyone: prompts and captions may carry @everyone or <@id>.
        # A rate limit longer than MAX_RATELIMIT_WAIT_S raises discord.RateLimited instead of
        # sleeping inside the request, so the outbox retries later rather than stalling.
        super().__init__(intents=discord.Intents(guilds=True), allowed_mentions=discord.AllowedMentions.none(),
                         max_ratelimit_timeout=MAX_RATELIMIT_WAIT_S)
        self.config = config
        self.bot_config = bot_config
        self.queue = queue
        self.data_dir = data_dir
        self.deliverer = DiscordDeliverer(self, queue, config.spoiler)
        self.tree = build_tree(self)

    async def setup_hook(self) -> None:
        # Buttons of status messages sent before a restart match these templates again.
        self.add_dynamic_items(CancelButton, RerollButton, SettingButton, ForgetButton)
        await self.tree.set_translator(CatalogueTranslator())  # descriptions in every catalogue's language
        if self.config.guild_id is not None:
            guild = discord.Object(id=self.config.guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)  # a test guild sees new commands at once
        else:
            await self.tree.sync()

    # -- use cases behind the commands ---------------------------------------------------------
    async def start_story(self, interaction: discord.Interaction, text: str | None,
                          image: discord.Attachment | None, seed: int | None,
                          settings: dict[str, Any] | None = None) -> None:
        """Check and queue a story, then post its status message in the channel."""
        await interaction.response.defer(thinking=True)
        try:
            queued = await self._queue_story(interaction, text, image, seed, settings or {})
        except (AccessDenied, InputError) as err:
            await _reply(interaction, err)
            return
        await _reply(interaction, queued.text)
        await self._post_status(queued, language(interaction))

    async def _queue_story(self, interaction: discord.Interaction, text: str | None,
                           image: discord.Attachment | None, seed: int | None,
                           settings: dict[str, Any]) -> intake.Queued:
        user_id, chat_id, chat_ids = _who(interaction)
        # Cheap checks first: nothing is downloaded for a refused user or a malformed story.
        await intake.preflight(self.queue, self.bot_config, platform=PLATFORM, user_id=user_id,
                               chat_id=chat_id, text=text, chat_ids=chat_ids, settings=settings)
        if image is None:
            raise InputError(NO_IMAGE)
        # The declared content type is not trusted either way: `enqueue` checks the bytes.
        check_photo_size(image.size, self.bot_config.limits)
        photo = await image.read()
        return await intake.start_story(self.queue, self.bot_config, intake.StoryRequest(
            platform=PLATFORM, chat_id=chat_id, user_id=user_id, text=text or "", photo=photo,
            seed=seed, chat_ids=chat_ids, meta=_channel_meta(interaction), settings=settings))

    async def _post_status(self, queued: intake.Queued, lang: str) -> None:
        position = queued.position if queued.position is not None else 1
        text = render(texts.position_text(queued.job.id, position, queued.eta_s), lang)
        try:
            await self.deliverer.post_status(queued.job, text)
        except Exception:
            # The outbox posts the status message with the first event if this one failed.
            log.exception("posting the status message of job #%d failed", queued.job.id)

    async def press_cancel(self, interaction: discord.Interaction, job_id: int) -> None:
        """❌ Cancel on a status message: the job's owner or an admin, in the job's channel."""
        user_id, chat_id, chat_ids = _who(interaction)
        try:
            check_allowed(self.bot_config, user_id, [chat_id, *chat_ids])
            text = await intake.cancel(self.queue, self.bot_config, platform=PLATFORM, user_id=user_id,
                                       job_id=job_id, chat_id=chat_id)
        except AccessDenied as err:
            text = err
        await _reply(interaction, text)

    async def press_reroll(self, interaction: discord.Interaction, job_id: int) -> None:
        """🔁 Re-roll: the same photo and prompts with a new seed; the job's owner or an admin, in its channel."""
        await interaction.response.defer(thinking=True, ephemeral=True)
        user_id, chat_id, chat_ids = _who(interaction)
        try:
            check_allowed(self.bot_config, user_id, [chat_id, *chat_ids])
            queued = await intake.reroll(self.queue, self.bot_config, job_id, platform=PLATFORM, user_id=user_id,
                                         chat_id=chat_id, chat_ids=chat_ids, meta=_channel_meta(interaction))
        except (AccessDenied, InputError) as err:
            await _reply(interaction, err)
            return
        await _reply(interaction, queued.text)
        await self._post_status(queued, language(interaction))

    async def press_forget(self, interaction: discord.Interaction, confirmed: bool, user_id: int) -> None:
        """The /forget question's buttons: only the user who asked may answer; the question becomes the result."""
        if interaction.user.id != user_id:
            await _reply(interaction, forget.NOT_YOURS)
            return
        if confirmed:
            text = await forget.forget(self.queue, platform=PLATFORM, user_id=str(user_id))
        else:
            text = forget.KEPT
        # The question turns into the outcome, without buttons, so it cannot be pressed twice.
        await interaction.response.edit_message(content=fit(render(text, language(interaction)),
                                                            DISCORD_CONTENT_CHARS), view=None)

    async def on_button_error(self, interaction: discord.Interaction, error: Exception) -> None:
        """The buttons' error handler: log first, then tell the presser once."""
        log.error("button %s failed", (interaction.data or {}).get("custom_id"), exc_info=error)
        await _reply(interaction, texts.INTERNAL_ERROR)


# -- command handlers ------------------------------------------------------------------------------
@app_commands.describe(prompts=locale_str('One prompt per ~5 s segment, separated by "|", e.g. walk | run | fly'),
                       image=locale_str("The photo to bring to life (JPEG, PNG or WebP)"),
                       seed=locale_str("Optional seed to repeat a result; random when left out"),
                       loop=locale_str("End on the photo, so the video plays seamlessly on repeat "
                                       "(changes the last segment)"),
                       color_match=locale_str("anchor: keep later segments on the photo's colours; off (default): "
                                              "leave them"))
async def story(interaction: discord.Interaction[SviClient], prompts: str,
                image: discord.Attachment | None = None,
                seed: app_commands.Range[int, 0, intake.MAX_SEED] | None = None,
                loop: bool | None = None, color_match: Literal["off", "anchor"] | None = None) -> None:
    """Turn a photo into a video story, one segment per prompt."""
    # Discord offers the choices, but a value is checked (with a clear answer) like any other input
    settings = {key: value for key, value in (("loop", loop), ("color_match", color_match)) if value is not None}
    await interaction.client.start_story(interaction, prompts, image, seed, settings)


async def status(interaction: discord.Interaction[SviClient]) -> None:
    """Show your jobs and whether a GPU worker is online."""
    client = interaction.client
    text = await intake.status(client.queue, platform=PLATFORM, user_id=str(interaction.user.id))
    await _reply(interaction, text)


@app_commands.describe(job=locale_str("The job number; leave out to cancel your only active job"))
async def cancel(interaction: discord.Interaction[SviClient], job: int | None = None) -> None:
    """Cancel one of your jobs."""
    client = interaction.client
    try:
        text = await intake.cancel(client.queue, client.bot_config, platform=PLATFORM,
                                   user_id=str(interaction.user.id), job_id=job)
    except AccessDenied as err:
        text = err
    await _reply(interaction, text)


async def _admin_reply(interaction: discord.Interaction[SviClient], report) -> None:
    """Reply with an admins-only report (`intake.queue_overview`, `intake.usage_stats`), or the refusal."""
    client = interaction.client
    try:
        text = await report(client.queue, client.bot_config, user_id=str(interaction.user.id))
    except AccessDenied as err:
        text = err
    await _reply(interaction, text)


async def queue_(interaction: discord.Interaction[SviClient]) -> None:
    """Show the whole queue (admins only)."""
    await _admin_reply(interaction, intake.queue_overview)


async def stats(interaction: discord.Interaction[SviClient]) -> None:
    """Usage of the last 7 days (admins only)."""
    await _admin_reply(interaction, intake.usage_stats)


async def help_(interaction: discord.Interaction[SviClient]) -> None:
    """How to use the bot, its limits and the rules."""
    client = interaction.client
    text = await intake.help_text(client.queue, client.bot_config, how_to=HOW_TO)
    await _reply(interaction, text)


async def forget_(interaction: discord.Interaction[SviClient]) -> None:
    """Delete all your jobs, photos and videos now (asks first)."""
    client = interaction.client
    text, anything = await forget.ask(client.queue, platform=PLATFORM, user_id=str(interaction.user.id))
    if not anything:
        await _reply(interaction, text)
        return
    lang = language(interaction)
    view = forget_view(interaction.user.id, render(forget.CONFIRM_LABEL, lang), render(forget.KEEP_LABEL, lang))
    await interaction.response.send_message(fit(render(text, lang), DISCORD_CONTENT_CHARS), view=view, ephemeral=True)


async def whoami(interaction: discord.Interaction[SviClient]) -> None:
    """Show your user id and this channel's and server's ids (for the operator's allowlist)."""
    where = [("channel", interaction.channel_id)] + ([("server", interaction.guild_id)] if interaction.guild_id else [])
    await _reply(interaction, texts.whoami_text("Discord", interaction.user.id, where))


async def story_from_message(interaction: discord.Interaction[SviClient], message: discord.Message) -> None:
    """Context menu: ask for the prompts, then make a story from the message's image.

    An attachment declared as an image is preferred; otherwise the first one, whose bytes decide.
    """
    declared = [a for a in message.attachments if (a.content_type or "").startswith("image/")]
    image = next(iter(declared or message.attachments), None)
    if image is None:
        await _reply(interaction, NO_IMAGE_IN_MESSAGE)
        return
    await interaction.response.send_modal(StoryModal(image, language(interaction)))


async def on_tree_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    """Log first, then tell the user once."""
    log.error("command %s failed", interaction.command and interaction.command.name, exc_info=error)
    await _reply(interaction, texts.INTERNAL_ERROR)


class GatedTree(app_commands.CommandTree):
    """A command tree whose every command passes the allowlists first."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.command is not None and interaction.command.name in texts.OPEN_COMMANDS:
            return True
        user_id, chat_id, chat_ids = _who(interaction)
        try:
            check_allowed(interaction.client.bot_config, user_id, [chat_id, *chat_ids])
        except AccessDenied as err:
            await _reply(interaction, err)
            return False
        return True


def build_tree(client: SviClient) -> app_commands.CommandTree:
    """All the wiring: each handler becomes an app command of a fresh tree."""
    tree = GatedTree(client)
    # Descriptions are at most 100 characters, in every language (Discord refuses the sync otherwise).
    commands = [
        ("story", story, locale_str("Turn a photo into a video story, one segment per prompt.")),
        ("status", status, locale_str("Show your jobs and whether a GPU worker is online.")),
        ("cancel", cancel, locale_str("Cancel one of your jobs.")),
        ("queue", queue_, locale_str("Show the whole queue (admins only).")),
        ("stats", stats, locale_str("Usage of the last 7 days (admins only).")),
        ("settings", settings_command,
         locale_str("Your defaults for new stories: quality, loop, colour match, chaining and seed.")),
        ("help", help_, locale_str("How to use the bot, its limits and the rules.")),
        ("forget", forget_, locale_str("Delete all your jobs, photos and videos now (asks first).")),
        ("whoami", whoami, locale_str("Show your user id and this channel's and server's ids.")),
    ]
    for name, callback, description in commands:
        tree.add_command(app_commands.command(name=name, description=description)(callback))
    tree.add_command(app_commands.ContextMenu(name=locale_str(CONTEXT_MENU_NAME), callback=story_from_message))
    tree.on_error = on_tree_error
    return tree


# -- helpers ---------------------------------------------------------------------------------------
def _who(interaction: discord.Interaction) -> tuple[str, str, tuple[str, ...]]:
    """(user id, channel id, extra ids the chat allowlist may match: the guild)."""
    chat_ids = (str(interaction.guild_id),) if interaction.guild_id else ()
    return str(interaction.user.id), str(interaction.channel_id), chat_ids


def _channel_meta(interaction: discord.Interaction) -> dict[str, object]:
    """What delivery needs later, fixed at enqueue time: upload limit, age restriction, guild, language."""
    limit = getattr(interaction, "filesize_limit", None)
    if not limit and interaction.guild is not None:
        limit = interaction.guild.filesize_limit
    channel = interaction.channel
    nsfw = bool(channel is not None and getattr(channel, "is_nsfw", lambda: False)())
    return {"filesize_limit": int(limit or DEFAULT_UPLOAD_LIMIT), "nsfw": nsfw, "guild_id": interaction.guild_id,
            STATUS_REPLY_META: True, **job_meta(language(interaction))}


async def _reply(interaction: discord.Interaction, text: Any) -> None:
    """Answer the interaction once, in the user's language: edit the deferred reply, or send one, cut
    to Discord's limit. `text` is a `Text`, a refusal or an input error (see `i18n.render`).

    If Discord refuses the answer, a short followup says so, so nobody is left on "thinking...".
    A dead interaction token is only logged.
    """
    lang = language(interaction)
    text = fit(render(text, lang), DISCORD_CONTENT_CHARS)
    try:
        if interaction.response.is_done():
            await interaction.edit_original_response(content=text)
        else:
            await interaction.response.send_message(text, ephemeral=True)
        return
    except discord.HTTPException as err:
        log.warning("could not answer interaction %d: %s", interaction.id, err)
        if err.status in (401, 404):  # the token expired or the interaction is gone: nobody to tell
            return
    failed = render(REPLY_FAILED, lang)
    try:
        if interaction.response.is_done():
            await interaction.followup.send(failed, ephemeral=True)
        else:
            await interaction.response.send_message(failed, ephemeral=True)
    except discord.HTTPException as err:
        log.warning("could not send the fallback answer to interaction %d: %s", interaction.id, err)


# -- entry point -----------------------------------------------------------------------------------
async def run_discord(config: DiscordConfig, bot_config: BotConfig, queue: JobQueue, data_dir: DataDir,
                      stop: asyncio.Event) -> None:
    """Run the Discord client and the outbox delivery loop until `stop` is set, then close both.

    A token Discord refuses raises TokenRejected, whose message names the variable, not the token.
    """
    add_secret(config.token)
    client = SviClient(config, bot_config, queue, data_dir)
    outbox = Outbox(queue, client.deliverer, OutboxConfig(edit_interval_s=config.edit_interval_s,
                                                           poll_interval_s=bot_config.poll_interval_s,
                                                           shutdown_grace_s=bot_config.shutdown_grace_s,
                                                           retry_base_s=bot_config.retry_base_s))
    async with client:
        client_task = asyncio.create_task(client.start(config.token), name="discord-client")
        outbox_task = asyncio.create_task(outbox.run(stop), name="discord-outbox")
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait({client_task, outbox_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        # The outbox finishes the event in flight before the HTTP session goes away (or cancels it
        # after its shutdown grace, leaving it pending), so an accepted upload is not sent twice.
        await asyncio.gather(outbox_task, return_exceptions=True)
        await client.close()
        results = await asyncio.gather(client_task, outbox_task, stop_task, return_exceptions=True)
    for result in results:
        if isinstance(result, discord.LoginFailure):
            raise TokenRejected(TOKEN_REJECTED) from None
        if isinstance(result, Exception):
            raise result
