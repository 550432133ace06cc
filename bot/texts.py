"""Every user-facing string of the chat bots, as plain functions of the values they show.

Texts are plain (no Markdown/HTML) so user prompts need no escaping on any platform. Whatever
quotes user input quotes a short excerpt, and `fit` cuts any text to a platform's length limit.
"""
from __future__ import annotations

from storage.config import Limits
from storage.models import Job, UsageReport
from storage.redact import redact
from storage.validate import excerpt
from storage.workers import WorkerStatus

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
    "loop: the last segment ends on the photo, so the video plays seamlessly on repeat. Only the last "
    "segment changes. loop:0.8 (any strength above 0, at most 1) loosens the end for more motion.",
    "color:anchor keeps every later segment on the photo's colours, against colour drift in long stories "
    "(default color:off).",
    "Options written here win over your defaults in /settings.",
]

RESPONSIBLE_USE = (
    "Use only photos you have the right to use. No sexual content involving real people "
    "and no impersonation of real people. The operator decides who may use the bot."
)

# Neutral on purpose: it neither repeats the word nor says which rule matched.
STORY_REFUSED = "This story can't be made here. Please change its wording and try again."


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


def minutes(seconds: float | None) -> str:
    """Round an ETA to whole minutes for display; unknown ETAs say so."""
    if seconds is None:
        return "unknown"
    return f"~{max(1, round(seconds / 60))} min"


def help_text(limits: Limits, *, queue_length: int, workers_online: int, command_prefix: str = "/",
              how_to: list[str] | None = None) -> str:
    """`how_to` replaces the example lines for platforms whose commands look different."""
    worker = "a GPU worker is online" if workers_online else "no GPU worker is online right now"
    p = command_prefix
    if how_to is None:
        how_to = [f"Example: a photo with the caption  {p}story a cat walks | the cat runs | the cat flies",
                  f"You can also reply {p}story ... to a photo, or send a photo and then {p}story ...",
                  "",
                  f"Options go before the prompts, e.g.  {p}story loop: color:anchor walk | run | fly",
                  *OPTIONS_HELP]
    return "\n".join([
        "Send a photo and a story; each part between | becomes one video segment.",
        "",
        *how_to,
        "",
        f"Limits: up to {limits.max_segments} segments per story, about {SECONDS_PER_SEGMENT} s each; "
        f"prompts up to {limits.max_prompt_chars} characters; photos up to "
        f"{limits.max_photo_bytes // (1024 * 1024)} MB.",
        f"Queue: {queue_length} job(s) waiting or running; {worker}.",
        "",
        f"{p}status: your jobs   {p}cancel [job]: cancel a job   {p}help: this text",
        f"{p}forget: delete all your jobs, photos and videos now (asks first)",
        "",
        RESPONSIBLE_USE,
    ])


def queued_text(job_id: int, position: int | None, eta_s: float | None, workers_online: int) -> str:
    text = f"Queued: job #{job_id}, position {position if position is not None else '?'}, ETA {minutes(eta_s)}"
    if not workers_online:
        text += "\nNo GPU worker is online right now; your job is queued and starts when one comes online."
    return text


def position_text(job_id: int, position: int, eta_s: float | None) -> str:
    if position <= 0:
        return f"Job #{job_id}: starting..."
    return f"Job #{job_id}: waiting, position {position} in the queue, ETA {minutes(eta_s)}"


def progress_bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = min(width, max(0, int(round(fraction * width))))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def progress_text(job_id: int, segment: int, num_segments: int, step: int, num_steps: int,
                  eta_s: float | None = None) -> str:
    """`segment` is 0-based (as in the event payload); `step` is 1-based."""
    done = (segment + (step / num_steps if num_steps else 0)) / max(1, num_segments)
    return (f"Job #{job_id}: generating {progress_bar(done)} {round(done * 100)}%\n"
            f"segment {segment + 1}/{num_segments}, step {step}/{num_steps}, ETA {minutes(eta_s)}")


def preview_caption(job_id: int) -> str:
    return f"Job #{job_id}: live preview (rough colours, from the step in progress)"


def uploading_text(job_id: int, index: int, num_segments: int) -> str:
    return f"Job #{job_id}: uploading segment {index + 1}/{num_segments}..."


def uploading_story_text(job_id: int) -> str:
    return f"Job #{job_id}: uploading the whole story..."


def done_text(job_id: int, num_segments: int, duration_s: float) -> str:
    return f"Job #{job_id}: done, {num_segments} segment(s), {duration_s:.0f} s of video."


def failed_text(job_id: int, error: str) -> str:
    """The worker's error may quote a URL or a path; tokens in it never reach the chat."""
    return f"Job #{job_id} failed: {redact(error)}"


def paused_text(job_id: int, segments_done: int, reason: str) -> str:
    return f"Job #{job_id} is paused after {segments_done} segment(s): {redact(reason)}"


def cancelled_text(job_id: int, segments_done: int) -> str:
    return f"Job #{job_id} was cancelled after {segments_done} segment(s)."


def segment_caption(index: int, num_segments: int, prompt: str) -> str:
    """`index` is 0-based."""
    return f"Segment {index + 1}/{num_segments}: {prompt}"


def story_caption(num_segments: int, duration_s: float) -> str:
    return f"Your story ({num_segments} segments, {duration_s:.0f} s)"


def too_big_text(what: str, size_bytes: int, limit_bytes: int) -> str:
    return (f"{what} is {size_bytes / 1e6:.1f} MB even after re-encoding, over the "
            f"{limit_bytes / 1e6:.0f} MB upload limit here. Try a story with fewer segments.")


def job_line(job: Job, position: int | None, eta_s: float | None) -> str:
    prompts = " | ".join(job.prompts)
    if len(prompts) > 60:
        prompts = prompts[:57] + "..."
    if job.state == "queued":
        where = f"queued, position {position}, ETA {minutes(eta_s)}"
    elif job.state == "running":
        where = f"running, ETA {minutes(eta_s)}"
    else:
        where = job.state
    return f"#{job.id} {where}: {prompts}"


def status_text(lines: list[str], workers_online: int) -> str:
    worker = "A GPU worker is online." if workers_online else "No GPU worker is online right now."
    if not lines:
        return f"You have no jobs. {worker}"
    return "Your jobs:\n" + "\n".join(lines) + "\n" + worker


def queue_text(lines: list[str], workers_online: int, worker_lines: list[str] = ()) -> str:
    head = "The queue is empty." if not lines else "Queue:\n" + "\n".join(lines)
    tail = "".join(f"\n  {w}" for w in worker_lines)
    return f"{head}\nGPU workers online: {workers_online}.{tail}"


def stats_text(report: UsageReport) -> str:
    """/stats and `svibot stats`: usage over the report's days, oldest day first."""
    lines = [f"Usage, last {len(report.days)} day(s) (UTC): stories / segments"]
    lines += [f"  {d.date}: {d.stories} / {d.segments}" for d in report.days]
    lines.append(f"Active users: {report.active_users}. Queue now: {report.queued} queued, {report.running} running.")
    lines.append("Median seconds per segment:" if report.seconds_per_segment else "Median seconds per segment: no segments yet.")
    lines += [f"  {t.preset} / {t.recipe}: {t.median_s:g} s ({t.segments} segment(s))" for t in report.seconds_per_segment]
    lines.append("Failures:" if report.failures else "Failures: none.")
    lines += [f"  {count} x {excerpt(reason, 80)}" for reason, count in report.failures]
    refused = sum(count for _, count in report.refusals)
    lines.append(f"Stories refused before queueing: {refused}"
                 + (" (" + ", ".join(f"{reason}: {count}" for reason, count in report.refusals) + ")" if refused else "."))
    return "\n".join(lines)


def worker_line(w: WorkerStatus) -> str:
    """One worker for /queue: where it runs, on what, and what it is doing."""
    budget = f", {w.vram_gib:g} GiB" if w.vram_gib else ""
    return f"{w.host} ({w.gpu or 'unknown GPU'}{budget}, {w.preset or 'any preset'}): {w.doing()}"


# -- refusals and replies ------------------------------------------------------------------------
# Answered to everyone, allowlisted or not: they show only the asker's own ids, and an operator needs
# them to fill the allowlist in the first place.
OPEN_COMMANDS = ("whoami",)


def whoami_text(platform: str, user_id: str | int, where: list[tuple[str, str | int]]) -> str:
    """Your ids, so an operator can put theirs in SVIBOT_ALLOWED_USERS / SVIBOT_ADMINS (or the notebook's OPERATOR_ID)."""
    lines = [f"Your {platform} user id: {user_id}"] + [f"This {name}'s id: {value}" for name, value in where]
    lines.append(f"The operator lets you in with SVIBOT_ALLOWED_USERS={user_id} (and SVIBOT_ADMINS={user_id} "
                 "for an admin); in the Colab notebook, put it in OPERATOR_ID.")
    return "\n".join(lines)


NOT_ALLOWED = "Sorry, this bot is private. The operator decides who may use it."
NOT_ALLOWED_CHAT = "Sorry, this bot is not enabled in this chat. The operator decides where it may be used."
ADMINS_ONLY = "Only the bot's admins may do that."
NO_PHOTO = ("There is no photo for this story. Send a photo with the caption /story a | b | c, "
            "reply /story ... to a photo, or send a photo first and then /story ...")
DISK_FULL = ("The server's disk is full, so your story was not queued. Please try again later; "
             "the operator has been told in the log.")
TELEGRAM_FILE_TOO_BIG = ("The file is too big for Telegram to hand to bots (over 20 MB). "
                         "Send a smaller or compressed photo.")
INTERNAL_ERROR = "Sorry, something went wrong on my side. The error was logged; please try again later."


def active_limit_text(active: int, limit: int, job_ids: list[int]) -> str:
    ids = ", ".join(f"#{i}" for i in job_ids)
    return (f"You already have {active} active job(s) ({ids}); the limit is {limit} per user. "
            "It frees up as soon as one of them finishes, or when you /cancel it.")


def daily_limit_text(count: int, limit: int, resets_in_s: float) -> str:
    hours, rest = divmod(int(resets_in_s), 3600)
    return (f"You have started {count} stories today; the limit is {limit} per day. "
            f"It resets at 00:00 UTC, in {hours} h {rest // 60} min.")


def photo_too_large_text(size_bytes: int, limit_bytes: int) -> str:
    return (f"The photo is {size_bytes / 1e6:.1f} MB; the limit is {limit_bytes / 1e6:.0f} MB. "
            "Send a smaller or compressed photo.")


def cancel_usage_text(job_ids: list[int]) -> str:
    if not job_ids:
        return "You have no active job to cancel."
    ids = ", ".join(f"#{i}" for i in job_ids)
    return f"You have several active jobs ({ids}); say which one, e.g. /cancel {job_ids[0]}"


def cancelled_reply(job: Job) -> str:
    if job.state == "cancelled":
        return f"Cancelled job #{job.id}."
    if job.state == "running":
        return f"Cancelling job #{job.id}; it stops after the current step."
    return f"Job #{job.id} is already {job.state}; nothing to cancel."


def bad_job_id_text(raw: str) -> str:
    return f"{excerpt(raw, 20)!r} is not a job number; use e.g. /cancel 12"


def no_such_job_text(job_id: int, verb: str) -> str:
    return f"There is no job #{job_id} to {verb}."


def not_your_job_text(job_id: int, verb: str) -> str:
    return f"You cannot {verb} job #{job_id}: only its owner or an admin may {verb} it."


def other_chat_text(job_id: int, verb: str) -> str:
    return f"Job #{job_id} belongs to another chat; you can {verb} it only there."


def download_failed_text(attempts: int) -> str:
    return (f"I could not download your photo from Telegram ({attempts} tries). "
            "Please send it again in a minute.")


# -- /settings -----------------------------------------------------------------------------------
SETTING_NAMES = {"quality": "Quality", "loop": "Loop", "color_match": "Colour match", "chaining": "Chaining",
                 "seed": "Seed"}
NOT_YOUR_SETTINGS = "These buttons change someone else's settings. Send /settings for yours."


def setting_value(key: str, value: object) -> str:
    if key == "seed":
        return "random" if value is None else str(value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def setting_button(key: str, value: object) -> str:
    return f"{SETTING_NAMES[key]}: {setting_value(key, value)}"


def settings_text(values: dict, command_prefix: str = "/") -> str:
    lines = ["Your defaults for new stories (what you write in a story command wins):"]
    lines += [f"  {setting_button(key, values[key])}" for key in SETTING_NAMES]
    lines += ["Tap a button to change one. Quality: fast (4 steps) or quality (50 steps, much slower). "
              "Loop: the video ends on the photo. Colour match anchor: later segments keep the photo's colours. "
              "Chaining: svi-pro or last-frame.",
              f"A fixed seed repeats a result: {command_prefix}settings seed 42, or {command_prefix}settings seed random."]
    return "\n".join(lines)


def setting_changed(key: str, value: object) -> str:
    return f"{setting_button(key, value)}"
