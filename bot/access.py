"""Who may use the bot and how much: allowlists, admins, per-user active-job and daily limits.

Each refusal is an `AccessDenied` whose text says which rule or limit was hit and when it resets.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from storage.config import Quota
from storage.errors import DailyQuotaReached, QuotaExceeded, TooManyActiveJobs
from storage.queue import JobQueue

from . import texts
from .config import BotConfig


class AccessDenied(Exception):
    """The request is refused. Its one argument is the reply for the user, a `Text` (`i18n.render(err, lang)`
    shows it in the user's language; `str(err)` in English)."""

    code = "denied"


class NotAuthorized(AccessDenied):
    code = "not_authorized"


class AdminsOnly(AccessDenied):
    code = "admins_only"


class ActiveJobLimit(AccessDenied):
    code = "active_job_limit"


class DailyLimit(AccessDenied):
    code = "daily_limit"

    def __init__(self, message: str, resets_at: float) -> None:
        super().__init__(message)
        self.resets_at = resets_at


def is_admin(config: BotConfig, user_id: str | int) -> bool:
    return str(user_id) in config.admins


def check_allowed(config: BotConfig, user_id: str | int, chat_ids: str | int | list[str | int] = ()) -> None:
    """Refuse users outside SVIBOT_ALLOWED_USERS and chats outside SVIBOT_ALLOWED_CHATS.

    Admins are always allowed. `chat_ids` may list several ids (e.g. a Discord channel and its
    guild); the chat rule passes when any of them is allowed.
    """
    if is_admin(config, user_id):
        return
    if config.allowed_users and str(user_id) not in config.allowed_users:
        raise NotAuthorized(texts.NOT_ALLOWED)
    ids = [chat_ids] if isinstance(chat_ids, (str, int)) else list(chat_ids)
    if config.allowed_chats and not any(str(c) in config.allowed_chats for c in ids):
        raise NotAuthorized(texts.NOT_ALLOWED_CHAT)


def check_admin(config: BotConfig, user_id: str | int) -> None:
    if not is_admin(config, user_id):
        raise AdminsOnly(texts.ADMINS_ONLY)


def day_start(now: float) -> float:
    """Midnight UTC of the day `now` falls in; the daily limit counts from here."""
    day = datetime.fromtimestamp(now, tz=timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()


def quota_for(config: BotConfig, user_id: str | int, *, now: float | None = None) -> Quota | None:
    """The per-user limits `enqueue` enforces for this user; None for admins, who are exempt."""
    if is_admin(config, user_id):
        return None
    now = time.time() if now is None else now
    return Quota(max_active_jobs=config.max_active_jobs, max_per_day=config.stories_per_day,
                 since=day_start(now))


def refusal(err: QuotaExceeded, *, now: float | None = None) -> AccessDenied:
    """The reply for a limit the queue enforced."""
    now = time.time() if now is None else now
    if isinstance(err, TooManyActiveJobs):
        return ActiveJobLimit(texts.active_limit_text(len(err.job_ids), err.limit, err.job_ids))
    if isinstance(err, DailyQuotaReached):
        resets_at = (datetime.fromtimestamp(day_start(now), tz=timezone.utc) + timedelta(days=1)).timestamp()
        return DailyLimit(texts.daily_limit_text(err.count, err.limit, resets_at - now), resets_at)
    return AccessDenied(str(err))


async def check_limits(config: BotConfig, queue: JobQueue, platform: str, user_id: str | int,
                       *, now: float | None = None) -> None:
    """Refuse a new story early (before any download) when the user is at a limit. Admins are exempt.

    Only a quick look: `enqueue` checks the same limits again in the insert's transaction.
    """
    if is_admin(config, user_id):
        return
    now = time.time() if now is None else now
    active = await queue.jobs_for_user(platform, str(user_id), active_only=True)
    if len(active) >= config.max_active_jobs:
        raise refusal(TooManyActiveJobs(sorted(j.id for j in active), config.max_active_jobs), now=now)
    count = await queue.count_since(platform, str(user_id), day_start(now))
    if count >= config.stories_per_day:
        raise refusal(DailyQuotaReached(count, config.stories_per_day), now=now)
