"""Every user-facing string of the chat bots, as plain functions of the values they show.

Each returns a `Text` (or `Lines` of them) in no language yet: the adapter renders it with
`i18n.render(text, lang)` in the language of the user it answers (bot/i18n.py). The English msgids
here are the source of the catalogues under bot/locale.

Texts are plain (no Markdown/HTML) so user prompts need no escaping on any platform. Whatever
quotes user input quotes a short excerpt, and `fit` cuts any text to a platform's length limit.
"""
from __future__ import annotations

from storage.config import Limits
from storage.models import Job
from storage.redact import redact
from storage.validate import excerpt

from .i18n import Lines, Text, _, _n, _p

# Platform length limits. Telegram and Discord count characters; a character outside the BMP may
# count twice, so `fit` counts UTF-16 code units, which is never less.
TELEGRAM_MESSAGE_CHARS = 4096
TELEGRAM_CAPTION_CHARS = 1024
TELEGRAM_CALLBACK_ANSWER_CHARS = 200
DISCORD_CONTENT_CHARS = 2000
ELLIPSIS = "\u2026"

SECONDS_PER_SEGMENT = 5  # what a user gets per prompt; the worker's presets make ~5 s clips
BAR_WIDTH = 10

# What the story options do, for /help (the Discord bot offers them as parameters too).
OPTIONS_HELP = [
    _("loop: the last segment ends on the photo, so the video plays seamlessly on repeat. Only the last "
      "segment changes. loop:0.8 (any strength above 0, at most 1) loosens the end for more motion."),
    _("color:anchor keeps every later segment on the photo's colours, against colour drift in long stories "
      "(default color:off)."),
    _("Options written here win over your defaults in /settings."),
]

RESPONSIBLE_USE = _("Use only photos you have the right to use. No sexual content involving real people "
                    "and no impersonation of real people. The operator decides who may use the bot.")

# Neutral on purpose: it neither repeats the word nor says which rule matched.
STORY_REFUSED = _("This story can't be made here. Please change its wording and try again.")
BUTTON_EXPIRED = _("This button is not valid any more.")


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def fit(text: str, limit: int) -> str:
    """`text` shortened to at most `limit` UTF-16 code units, ending in an ellipsis when cut."""
    if utf16_len(text) <= limit:
        return text
    budget, out = limit - 1, []  # one unit for the ellipsis
    for ch in text:
        budget -= 2 if ord(ch) > 0xFFFF else 1
        if budget < 0:
            break
        out.append(ch)
    return "".join(out).rstrip() + ELLIPSIS


def minutes(seconds: float | None) -> Text:
    """Round an ETA to whole minutes for display; unknown ETAs say so."""
    if seconds is None:
        return _p("ETA", "unknown")
    return _("~{n} min", n=max(1, round(seconds / 60)))


def help_text(limits: Limits, *, queue_length: int, workers_online: int, command_prefix: str = "/",
              how_to: list[Text] | None = None) -> Lines:
    """`how_to` replaces the example lines for platforms whose commands look different."""
    worker = _("a GPU worker is online") if workers_online else _("no GPU worker is online right now")
    p = command_prefix
    if how_to is None:
        how_to = [_("Example: a photo with the caption  {p}story a cat walks | the cat runs | the cat flies", p=p),
                  _("You can also reply {p}story ... to a photo, or send a photo and then {p}story ...", p=p),
                  "",
                  _("Options go before the prompts, e.g.  {p}story loop: color:anchor walk | run | fly", p=p),
                  *OPTIONS_HELP]
    return Lines([
        _("Send a photo and a story; each part between | becomes one video segment."),
        "",
        *how_to,
        "",
        _("Limits: up to {segments} segments per story, about {seconds} s each; prompts up to {chars} characters; "
          "photos up to {mb} MB.", segments=limits.max_segments, seconds=SECONDS_PER_SEGMENT,
          chars=limits.max_prompt_chars, mb=limits.max_photo_bytes // (1024 * 1024)),
        _n("Queue: {n} job waiting or running; {worker}.", "Queue: {n} jobs waiting or running; {worker}.",
           queue_length, worker=worker),
        "",
        _("{p}status: your jobs   {p}cancel [job]: cancel a job   {p}help: this text", p=p),
        _("{p}forget: delete all your jobs, photos and videos now (asks first)", p=p),
        "",
        RESPONSIBLE_USE,
    ])


def queued_text(job_id: int, position: int | None, eta_s: float | None, workers_online: int) -> Lines:
    lines: list[Text] = [_("Queued: job #{job}, position {position}, ETA {eta}", job=job_id,
                           position=position if position is not None else "?", eta=minutes(eta_s))]
    if not workers_online:
        lines.append(_("No GPU worker is online right now; your job is queued and starts when one comes online."))
    return Lines(lines)


def position_text(job_id: int, position: int, eta_s: float | None) -> Text:
    if position <= 0:
        return _("Job #{job}: starting...", job=job_id)
    return _("Job #{job}: waiting, position {position} in the queue, ETA {eta}", job=job_id, position=position,
             eta=minutes(eta_s))


def progress_bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = min(width, max(0, int(round(fraction * width))))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def progress_text(job_id: int, segment: int, num_segments: int, step: int, num_steps: int,
                  eta_s: float | None = None) -> Lines:
    """`segment` is 0-based (as in the event payload); `step` is 1-based."""
    done = (segment + (step / num_steps if num_steps else 0)) / max(1, num_segments)
    return Lines([
        _("Job #{job}: generating {bar} {percent}%", job=job_id, bar=progress_bar(done), percent=round(done * 100)),
        _("segment {segment}/{segments}, step {step}/{steps}, ETA {eta}", segment=segment + 1,
          segments=num_segments, step=step, steps=num_steps, eta=minutes(eta_s)),
    ])


def preview_caption(job_id: int) -> Text:
    return _("Job #{job}: live preview (rough colours, from the step in progress)", job=job_id)


def uploading_text(job_id: int, index: int, num_segments: int) -> Text:
    return _("Job #{job}: uploading segment {segment}/{segments}...", job=job_id, segment=index + 1,
             segments=num_segments)


def done_text(job_id: int, num_segments: int, duration_s: float) -> Text:
    return _n("Job #{job}: done, {n} segment, {seconds:.0f} s of video.",
              "Job #{job}: done, {n} segments, {seconds:.0f} s of video.",
              num_segments, job=job_id, seconds=float(duration_s))


def failed_text(job_id: int, error: str) -> Text:
    """The worker's error may quote a URL or a path; tokens in it never reach the chat."""
    return _("Job #{job} failed: {error}", job=job_id, error=redact(error))


def paused_text(job_id: int, segments_done: int, reason: str) -> Text:
    return _n("Job #{job} is paused after {n} segment: {reason}", "Job #{job} is paused after {n} segments: {reason}",
              segments_done, job=job_id, reason=redact(reason))


def cancelled_text(job_id: int, segments_done: int) -> Text:
    return _n("Job #{job} was cancelled after {n} segment.", "Job #{job} was cancelled after {n} segments.",
              segments_done, job=job_id)


def segment_caption(index: int, num_segments: int, prompt: str) -> Text:
    """`index` is 0-based."""
    return _("Segment {segment}/{segments}: {prompt}", segment=index + 1, segments=num_segments, prompt=prompt)


def story_caption(num_segments: int, duration_s: float) -> Text:
    return _n("Your story ({n} segment, {seconds:.0f} s)", "Your story ({n} segments, {seconds:.0f} s)",
              num_segments, seconds=float(duration_s))


def video_too_big_text(size_bytes: int, limit_bytes: int) -> Text:
    return _("This video is {size:.1f} MB even after re-encoding, over the {limit:.0f} MB upload limit here. "
             "Try a story with fewer segments.", size=size_bytes / 1e6, limit=limit_bytes / 1e6)


STATES = {"queued": _p("job state", "queued"), "running": _p("job state", "running"),
          "done": _p("job state", "done"), "failed": _p("job state", "failed"),
          "cancelled": _p("job state", "cancelled")}


def state_name(state: str) -> Text | str:
    return STATES.get(state, state)


def job_line(job: Job, position: int | None, eta_s: float | None) -> Text:
    prompts = " | ".join(job.prompts)
    if len(prompts) > 60:
        prompts = prompts[:57] + "..."
    if job.state == "queued":
        where: Text | str = _("queued, position {position}, ETA {eta}", position=position, eta=minutes(eta_s))
    elif job.state == "running":
        where = _("running, ETA {eta}", eta=minutes(eta_s))
    else:
        where = state_name(job.state)
    return _("#{job} {where}: {prompts}", job=job.id, where=where, prompts=prompts)


def status_text(lines: list[Text], workers_online: int) -> Lines | Text:
    worker = _("A GPU worker is online.") if workers_online else _("No GPU worker is online right now.")
    if not lines:
        return _("You have no jobs. {worker}", worker=worker)
    return Lines([_("Your jobs:"), *lines, worker])


# -- refusals and replies ------------------------------------------------------------------------
# Answered to everyone, allowlisted or not: they show only the asker's own ids, and an operator needs
# them to fill the allowlist in the first place.
OPEN_COMMANDS = ("whoami",)
WHERE_NAMES = {"chat": _("This chat's id: {id}"), "channel": _("This channel's id: {id}"),
               "server": _("This server's id: {id}")}


def whoami_text(platform: str, user_id: str | int, where: list[tuple[str, str | int]]) -> Lines:
    """Your ids, so an operator can put theirs in SVIBOT_ALLOWED_USERS / SVIBOT_ADMINS (or the notebook's OPERATOR_ID)."""
    return Lines([
        _("Your {platform} user id: {id}", platform=platform, id=user_id),
        *[Text(WHERE_NAMES[name].msgid, {"id": value}) for name, value in where],
        _("The operator lets you in with SVIBOT_ALLOWED_USERS={id} (and SVIBOT_ADMINS={id} for an admin); "
          "in the Colab notebook, put it in OPERATOR_ID.", id=user_id),
    ])


NOT_ALLOWED = _("Sorry, this bot is private. The operator decides who may use it.")
NOT_ALLOWED_CHAT = _("Sorry, this bot is not enabled in this chat. The operator decides where it may be used.")
ADMINS_ONLY = _("Only the bot's admins may do that.")
NO_PHOTO = _("There is no photo for this story. Send a photo with the caption /story a | b | c, "
             "reply /story ... to a photo, or send a photo first and then /story ...")
DISK_FULL = _("The server's disk is full, so your story was not queued. Please try again later; "
              "the operator has been told in the log.")
TELEGRAM_FILE_TOO_BIG = _("The file is too big for Telegram to hand to bots (over 20 MB). "
                          "Send a smaller or compressed photo.")
INTERNAL_ERROR = _("Sorry, something went wrong on my side. The error was logged; please try again later.")


def active_limit_text(active: int, limit: int, job_ids: list[int]) -> Text:
    return _n("You already have {n} active job ({ids}); the limit is {limit} per user. "
              "It frees up as soon as one of them finishes, or when you /cancel it.",
              "You already have {n} active jobs ({ids}); the limit is {limit} per user. "
              "It frees up as soon as one of them finishes, or when you /cancel it.",
              active, ids=", ".join(f"#{i}" for i in job_ids), limit=limit)


def daily_limit_text(count: int, limit: int, resets_in_s: float) -> Text:
    hours, rest = divmod(int(resets_in_s), 3600)
    return _n("You have started {n} story today; the limit is {limit} per day. "
              "It resets at 00:00 UTC, in {hours} h {minutes} min.",
              "You have started {n} stories today; the limit is {limit} per day. "
              "It resets at 00:00 UTC, in {hours} h {minutes} min.",
              count, limit=limit, hours=hours, minutes=rest // 60)


def cancel_usage_text(job_ids: list[int]) -> Text:
    if not job_ids:
        return _("You have no active job to cancel.")
    return _("You have several active jobs ({ids}); say which one, e.g. /cancel {first}",
             ids=", ".join(f"#{i}" for i in job_ids), first=job_ids[0])


def cancelled_reply(job: Job) -> Text:
    if job.state == "cancelled":
        return _("Cancelled job #{job}.", job=job.id)
    if job.state == "running":
        return _("Cancelling job #{job}; it stops after the current step.", job=job.id)
    return _("Job #{job} is already {state}; nothing to cancel.", job=job.id, state=state_name(job.state))


def bad_job_id_text(raw: str) -> Text:
    return _("{value!r} is not a job number; use e.g. /cancel 12", value=excerpt(raw, 20))


# What can be done to a job from a command or a button, each with its own sentences (a verb does
# not slot into every language's sentence the same way).
ACTIONS = ("cancel", "reroll")
_NO_SUCH_JOB = {"cancel": _("There is no job #{job} to cancel."),
                "reroll": _("There is no job #{job} to re-roll.")}
_NOT_YOUR_JOB = {"cancel": _("You cannot cancel job #{job}: only its owner or an admin may cancel it."),
                 "reroll": _("You cannot re-roll job #{job}: only its owner or an admin may re-roll it.")}
_OTHER_CHAT = {"cancel": _("Job #{job} belongs to another chat; you can cancel it only there."),
               "reroll": _("Job #{job} belongs to another chat; you can re-roll it only there.")}


def _action_text(table: dict[str, Text], job_id: int, action: str) -> Text:
    if action not in table:
        raise ValueError(f"action is {action!r}; it must be one of {ACTIONS}")
    return Text(table[action].msgid, {"job": job_id})


def no_such_job_text(job_id: int, action: str) -> Text:
    return _action_text(_NO_SUCH_JOB, job_id, action)


def not_your_job_text(job_id: int, action: str) -> Text:
    return _action_text(_NOT_YOUR_JOB, job_id, action)


def other_chat_text(job_id: int, action: str) -> Text:
    return _action_text(_OTHER_CHAT, job_id, action)


def requeued_text(job_id: int) -> Text:
    """A re-roll button's short answer."""
    return _("Queued job #{job}.", job=job_id)


def download_failed_text(attempts: int) -> Text:
    return _n("I could not download your photo from Telegram ({n} try). Please send it again in a minute.",
              "I could not download your photo from Telegram ({n} tries). Please send it again in a minute.",
              attempts)
