"""Frozen settings for the chat bots; `svibot.config` builds them from the environment.

Tokens are kept out of logs and replies by `storage.redact`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from storage.config import Limits

from .moderation import BlockedWords

CLOUD_API_BASE_URL = "https://api.telegram.org"
CLOUD_UPLOAD_LIMIT_MB = 50  # the cloud Bot API refuses bigger uploads
SELF_HOSTED_UPLOAD_LIMIT_MB = 2000  # a local Bot API server accepts up to 2 GB
SPOILER_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class BotConfig:
    """Who may use the bots and how much; shared by every chat platform."""

    allowed_users: frozenset[str] = frozenset()  # empty: anyone may use the bot
    allowed_chats: frozenset[str] = frozenset()  # empty: any chat, group, guild or channel
    admins: frozenset[str] = frozenset()  # may cancel any job and see /queue; not limited
    max_active_jobs: int = 1  # queued + running jobs per user; one GPU is shared by everybody
    stories_per_day: int = 20  # per user, counted per UTC day
    limits: Limits = field(default_factory=Limits)
    poll_interval_s: float = 1.0  # how often the outbox looks for new events
    shutdown_grace_s: float = 10.0  # on stop, how long a delivery in flight may still take
    retry_base_s: float = 2.0  # the outbox's first backoff after a 5xx, timeout or dropped connection
    blocked_words: BlockedWords = field(default_factory=BlockedWords)  # stories naming one are refused

    def __post_init__(self) -> None:
        if self.max_active_jobs < 1:
            raise ValueError(f"max_active_jobs is {self.max_active_jobs}; it must be at least 1")
        if self.stories_per_day < 1:
            raise ValueError(f"stories_per_day is {self.stories_per_day}; it must be at least 1")
        if self.poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s is {self.poll_interval_s}; it must be above 0")
        if self.shutdown_grace_s < 0:
            raise ValueError(f"shutdown_grace_s is {self.shutdown_grace_s}; it must not be negative")


@dataclass(frozen=True)
class TelegramConfig:
    """How to reach the Telegram Bot API (cloud or self-hosted) and how often to talk to it."""

    token: str = field(repr=False)
    api_base_url: str = CLOUD_API_BASE_URL  # server root; <root>/bot and <root>/file/bot are derived
    upload_limit_mb: int = CLOUD_UPLOAD_LIMIT_MB
    edit_interval_s: float = 3.0  # Telegram throttles edits; one per 3 s per chat stays clear of 429s
    photo_memory_s: float = 600.0  # how long a photo waits for a following /story in the same chat
    poll_timeout_s: float = 10.0  # getUpdates long-poll timeout
    file_retry_s: tuple[float, ...] = (0.5, 1.0, 2.0)  # waits between attempts to fetch a user's file

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("TELEGRAM_BOT_TOKEN is empty; set it to the token from @BotFather")
        if not self.api_base_url.startswith(("http://", "https://")):
            raise ValueError(f"TELEGRAM_API_BASE_URL must start with http:// or https://, not {self.api_base_url!r}")
        limit = SELF_HOSTED_UPLOAD_LIMIT_MB if self.self_hosted else CLOUD_UPLOAD_LIMIT_MB
        if not 1 <= self.upload_limit_mb <= limit:
            where = "a self-hosted Bot API server" if self.self_hosted else "the cloud Bot API"
            raise ValueError(
                f"SVIBOT_TELEGRAM_UPLOAD_LIMIT_MB is {self.upload_limit_mb}; with {where} it must be "
                f"between 1 and {limit}")
        if self.edit_interval_s < 0:
            raise ValueError(f"edit_interval_s is {self.edit_interval_s}; it must not be negative")
        if any(w < 0 for w in self.file_retry_s):
            raise ValueError(f"file_retry_s is {self.file_retry_s}; waits must not be negative")

    @property
    def self_hosted(self) -> bool:
        return self.api_base_url.rstrip("/") != CLOUD_API_BASE_URL

    @property
    def bot_url(self) -> str:
        return f"{self.api_base_url.rstrip('/')}/bot"

    @property
    def file_url(self) -> str:
        return f"{self.api_base_url.rstrip('/')}/file/bot"

    @property
    def upload_limit_bytes(self) -> int:
        return self.upload_limit_mb * 1024 * 1024


@dataclass(frozen=True)
class DiscordConfig:
    """How to reach Discord: the token, the guild to sync commands to, spoiler policy."""

    token: str = field(repr=False)
    guild_id: int | None = None  # sync app commands to this guild at once; None syncs globally (slow)
    spoiler: str = "auto"  # auto: spoiler unless the channel is age-restricted
    edit_interval_s: float = 2.0  # Discord allows ~5 edits per 5 s per channel; stay well under

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("DISCORD_BOT_TOKEN is empty; set it to the bot token from the developer portal")
        if self.spoiler not in SPOILER_MODES:
            raise ValueError(f"SVIBOT_DISCORD_SPOILER is {self.spoiler!r}; it must be one of {SPOILER_MODES}")
        if self.edit_interval_s < 0:
            raise ValueError(f"edit_interval_s is {self.edit_interval_s}; it must not be negative")
