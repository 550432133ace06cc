"""Platform-neutral use cases behind the chat commands: start a story, re-roll, cancel, status, queue.

Adapters parse their platform's messages, call these, and render the result or the error text in the
user's language (`i18n.render`). Refusals are `access.AccessDenied`; bad input is
`storage.errors.InputError`; both read well as replies. Nothing here knows the user's language: texts
come back as `Text` values, and a job remembers its requester's language in `meta` (set by the adapter).
"""
from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.config import Limits
from storage.errors import DiskFull, InputError, JobNotFound, NotAllowed, QuotaExceeded
from storage.models import ACTIVE_STATES, Job, NewJob
from storage.options import check_story_options, split_options
from storage.queue import JobQueue
from storage.validate import parse_prompts

from . import access, admin_texts, texts, user_settings
from .config import BotConfig
from .i18n import Lines, Text

log = logging.getLogger(__name__)
MAX_SEED = 2**31 - 1


class NotQueued(InputError):
    """The request was fine but the server cannot take it now (its disk is full)."""

    code = "not_queued"


class UnknownJob(InputError):
    """A button or command names a job that does not exist here (or not on this platform)."""

    code = "unknown_job"


class StoryRefused(InputError):
    """The story names one of the operator's blocked words; the reply stays neutral."""

    code = "refused"


def new_seed() -> int:
    return random.randint(0, MAX_SEED)


@dataclass(frozen=True)
class StoryRequest:
    """One "make a story" request, already lifted out of the platform's message."""

    platform: str
    chat_id: str
    user_id: str
    text: str  # the prompts, "a | b | c", after any options ("loop: a | b | c")
    photo: bytes
    seed: int | None = None  # None: a random seed
    chat_ids: tuple[str, ...] = ()  # extra ids the chat allowlist may match (e.g. a Discord guild)
    meta: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # e.g. {"preset": "tiny"}; wins over options in
    # the text ("loop: a | b"), which win over the user's /settings defaults
    use_defaults: bool = True  # apply the user's /settings under `settings` and `seed` (not for a re-roll)


@dataclass(frozen=True)
class Queued:
    """A job just queued, with what the first reply shows."""

    job: Job
    position: int | None
    eta_s: float | None
    workers_online: int

    @property
    def text(self) -> Lines:
        return texts.queued_text(self.job.id, self.position, self.eta_s, self.workers_online)


def parse_story(text: str | None, limits: Limits, settings: dict[str, Any] | None = None) -> tuple[list[str], dict]:
    """The prompts of a story text and its job settings: the options it starts with ("loop: a | b"), then
    `settings` (a platform's parameters, or a re-rolled job's settings), which win. Bad values raise InputError."""
    options, rest = split_options(text)
    merged = {**options, **(settings or {})}
    check_story_options(merged)
    return parse_prompts(rest, limits), merged


async def preflight(queue: JobQueue, config: BotConfig, *, platform: str, user_id: str, chat_id: str,
                    text: str | None, chat_ids: Sequence[str] = (),
                    settings: dict[str, Any] | None = None) -> tuple[list[str], dict]:
    """Everything that can be checked before the photo is downloaded; returns the prompts and the settings.

    Raises AccessDenied (allowlist, active-job or daily limit) or InputError (bad prompts or options, or
    StoryRefused for a blocked word, which is recorded for the admins' /stats).
    """
    access.check_allowed(config, user_id, [chat_id, *chat_ids])
    prompts, settings = parse_story(text, config.limits, settings)
    blocked = config.blocked_words.find(" | ".join(prompts))
    if blocked is not None:
        await queue.record_refusal(platform, chat_id, user_id, "blocked_word", blocked)
        log.info("refused a story of %s:%s: a blocked word", platform, user_id)
        raise StoryRefused(texts.STORY_REFUSED)
    await access.check_limits(config, queue, platform, user_id)
    return prompts, settings


async def start_story(queue: JobQueue, config: BotConfig, request: StoryRequest) -> Queued:
    """Check access, limits and prompts, then queue the job; `enqueue` checks the photo and,
    in the insert's transaction, the user's limits again. Nothing is queued on error."""
    prompts, settings = await preflight(queue, config, platform=request.platform, user_id=request.user_id,
                                        chat_id=request.chat_id, text=request.text, chat_ids=request.chat_ids,
                                        settings=request.settings)
    seed = request.seed
    if request.use_defaults:  # the user's /settings, under anything the command itself says
        defaults, default_seed = user_settings.story_defaults(
            await queue.user_settings(request.platform, request.user_id))
        settings = {**defaults, **settings}
        seed = default_seed if seed is None else seed
    seed = new_seed() if seed is None else seed
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed is {seed}; it must be between 0 and {MAX_SEED}")
    try:
        job = await queue.enqueue(NewJob(
            platform=request.platform, chat_id=str(request.chat_id), user_id=str(request.user_id),
            photo=request.photo, prompts=prompts, settings={**settings, "seed": seed},
            meta=dict(request.meta),
        ), config.limits, access.quota_for(config, request.user_id))
    except QuotaExceeded as err:
        raise access.refusal(err) from None
    except DiskFull as err:
        log.error("refused a story: %s", err)
        raise NotQueued(texts.DISK_FULL) from err
    return await describe_queued(queue, job)


async def describe_queued(queue: JobQueue, job: Job) -> Queued:
    position = await queue.position(job.id)
    stats = await queue.stats()
    eta = stats.eta_seconds(await queue.segments_ahead(job.id))
    return Queued(job=job, position=position, eta_s=eta, workers_online=stats.workers_online)


async def _job_here(queue: JobQueue, config: BotConfig, job_id: int, *, platform: str, user_id: str,
                    chat_id: str | None, action: str) -> Job:
    """The job a button or command acts on, if `user_id` may act on it from `chat_id`.

    A job of another platform does not exist here. Only the owner or an admin may act, and a
    button (`chat_id` given) only on jobs of the chat it lives in.
    """
    try:
        job = await queue.get_job(job_id)
    except JobNotFound:
        job = None
    if job is None or job.platform != platform:
        raise UnknownJob(texts.no_such_job_text(job_id, action))
    if job.user_id != str(user_id) and not access.is_admin(config, user_id):
        raise access.AccessDenied(texts.not_your_job_text(job_id, action))
    if chat_id is not None and job.chat_id != str(chat_id):
        raise access.AccessDenied(texts.other_chat_text(job_id, action))
    return job


async def reroll(queue: JobQueue, config: BotConfig, job_id: int, *, platform: str, user_id: str, chat_id: str,
                 chat_ids: Sequence[str] = (), meta: dict[str, Any] | None = None) -> Queued:
    """Queue the same photo and prompts again with a new seed, as a new job in the same chat.

    Only the job's owner or an admin may, and only from the chat the job belongs to.
    """
    old = await _job_here(queue, config, job_id, platform=platform, user_id=user_id, chat_id=chat_id,
                          action="reroll")
    photo = (await queue.local_file(old.photo_path, job_id=old.id)).read_bytes()
    settings = {k: v for k, v in old.settings.items() if k != "seed"}
    return await start_story(queue, config, StoryRequest(
        platform=old.platform, chat_id=str(chat_id), user_id=str(user_id), text=" | ".join(old.prompts),
        photo=photo, chat_ids=tuple(chat_ids),
        meta={**old.meta, **(meta or {}), "reroll_of": old.id}, settings=settings, use_defaults=False,
    ))


async def cancel(queue: JobQueue, config: BotConfig, *, platform: str, user_id: str,
                 job_id: int | None, chat_id: str | None = None) -> Text:
    """Cancel `job_id`, or the user's only active job; returns the reply text.

    Raises AccessDenied when the job belongs to someone else (admins may cancel any job) or,
    with `chat_id` (a button), to another chat. A job of another platform is "no job" here.
    """
    if job_id is None:
        active = await queue.jobs_for_user(platform, user_id, active_only=True)
        if len(active) != 1:
            return texts.cancel_usage_text(sorted(j.id for j in active))
        job_id = active[0].id
    try:
        await _job_here(queue, config, job_id, platform=platform, user_id=user_id, chat_id=chat_id,
                        action="cancel")
        job = await queue.cancel(job_id, by_user=user_id, is_admin=access.is_admin(config, user_id))
    except UnknownJob as err:
        return err.args[0]
    except JobNotFound:
        return texts.no_such_job_text(job_id, "cancel")
    except NotAllowed:
        raise access.AccessDenied(texts.not_your_job_text(job_id, "cancel")) from None
    return texts.cancelled_reply(job)


async def _job_lines(queue: JobQueue, jobs: list[Job]) -> list[Text]:
    stats = await queue.stats()
    lines = []
    for job in jobs:
        position = await queue.position(job.id) if job.state in ACTIVE_STATES else None
        eta = stats.eta_seconds(await queue.segments_ahead(job.id)) if job.state in ACTIVE_STATES else None
        lines.append(texts.job_line(job, position, eta))
    return lines


async def status(queue: JobQueue, *, platform: str, user_id: str, recent: int = 5) -> Text | Lines:
    """The user's active jobs plus a few recent ones, and whether a worker is online."""
    jobs = await queue.jobs_for_user(platform, user_id)
    active = [j for j in jobs if j.state in ACTIVE_STATES]
    finished = [j for j in jobs if j.state not in ACTIVE_STATES][:recent]
    shown = sorted(active, key=lambda j: j.id) + finished
    stats = await queue.stats()
    return texts.status_text(await _job_lines(queue, shown), stats.workers_online)


async def queue_overview(queue: JobQueue, config: BotConfig, *, user_id: str, limit: int = 30) -> Lines:
    """The whole queue, for admins only (raises AdminsOnly otherwise)."""
    access.check_admin(config, user_id)
    jobs = await queue.list_jobs(ACTIVE_STATES, limit=limit)
    lines = [admin_texts.queue_line(line, job) for job, line in zip(jobs, await _job_lines(queue, jobs))]
    stats = await queue.stats()
    return admin_texts.queue_text(lines, stats.workers_online,
                                  [admin_texts.worker_line(w) for w in await queue.workers()])


async def usage_stats(queue: JobQueue, config: BotConfig, *, user_id: str, days: int = 7) -> Lines:
    """/stats: usage of the last `days` days, for admins only (raises AdminsOnly otherwise)."""
    access.check_admin(config, user_id)
    return admin_texts.stats_text(await queue.usage_report(days=days))


async def help_text(queue: JobQueue, config: BotConfig, *, command_prefix: str = "/",
                    how_to: list[Text | str] | None = None) -> Lines:
    stats = await queue.stats()
    return texts.help_text(config.limits, queue_length=stats.queued + stats.running,
                           workers_online=stats.workers_online, command_prefix=command_prefix, how_to=how_to)
