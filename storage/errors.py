"""Errors shared by the queue, the adapters and the worker.

Every `InputError` carries a message meant for the person who sent the input. Each names the bad
value and the limit it broke. Those a chat user can cause are written as a template marked with `N_`
plus its values (`PromptTooLong(N_("Prompt {index} is ..."), index=2, ...)`): `str(err)` is the
English text, and the chat bots look the template up in their message catalogues (bot/locale) to
answer in the user's language.
"""
from __future__ import annotations

from .disk import free_bytes, free_space_needed


class SvibotError(Exception):
    """Base class for errors svibot raises on purpose."""


def N_(message: str) -> str:
    """Marks a message for the bots' catalogues without translating it here (gettext's `N_` idiom)."""
    return message


class InputError(SvibotError, ValueError):
    """Bad user input. `str(err)` is safe and useful to show to the user.

    With `params`, `message` is a `str.format` template: `template` and `params` keep both, so a
    front end can show the message in another language.
    """

    code = "bad_input"

    def __init__(self, message: object = "", /, **params: object) -> None:
        super().__init__(message.format(**params) if params and isinstance(message, str) else message)
        self.template = message if isinstance(message, str) else None
        self.params = params


class EmptyPrompt(InputError):
    code = "empty_prompt"


class TooManySegments(InputError):
    code = "too_many_segments"


class PromptTooLong(InputError):
    code = "prompt_too_long"


class NotAnImage(InputError):
    code = "not_an_image"


class TruncatedImage(InputError):
    code = "truncated_image"


class PhotoTooSmall(InputError):
    code = "photo_too_small"


class PhotoTooLarge(InputError):
    code = "photo_too_large"


class BadSetting(InputError):
    code = "bad_setting"


class TokenRejected(BadSetting):
    """A chat platform refused the bot's token. The message names the variable, never the token."""

    code = "token_rejected"


class DiskFull(SvibotError, OSError):
    """The data dir's disk is full. Nothing was left half-written and nothing was recorded that is
    not on disk; the work resumes once space is freed.

    `free` is the space left when the write failed, `needed` the space to free before retrying
    (both in bytes; see `storage.disk.free_space_needed`)."""

    def __init__(self, path: object, *, free: int | None = None, needed: int | None = None,
                 message: str | None = None) -> None:
        self.path = path
        self.free = free_bytes(path) if free is None else free
        self.needed = free_space_needed() if needed is None else needed
        super().__init__(message or f"disk full while writing {path}: {_mb(self.free)} free, "
                                    f"at least {_mb(self.needed)} needed")


class DatabaseFull(DiskFull):
    """The database server's disk is full (PostgreSQL's SQLSTATE 53100 `disk_full`). The outcome is
    the same as for a full data dir (the transaction wrote nothing, the job pauses), but the space
    to free is on the server, whose free space this machine cannot see."""

    def __init__(self, database: str, detail: str) -> None:
        self.database = database  # the URL without its password
        self.detail = detail  # the server's own message
        super().__init__(database, free=0, needed=0,
                         message=f"the database {database} is out of disk space ({detail})")


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class CorruptDatabase(SvibotError):
    """The queue file exists but is not a usable svibot SQLite database."""


class QuotaExceeded(SvibotError):
    """A per-user limit refused a new job; nothing was written."""


class TooManyActiveJobs(QuotaExceeded):
    def __init__(self, job_ids: list[int], limit: int) -> None:
        super().__init__(f"{len(job_ids)} active job(s) {job_ids}; the limit is {limit}")
        self.job_ids = job_ids
        self.limit = limit


class DailyQuotaReached(QuotaExceeded):
    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} job(s) today; the limit is {limit}")
        self.count = count
        self.limit = limit


class SchemaTooNew(CorruptDatabase):
    """The database was upgraded by a newer svibot; this one refuses to touch it."""


class SchemaOutdated(SvibotError):
    """The database's schema is older than this svibot's and may not be upgraded from here."""


class DatabaseUnavailable(SvibotError):
    """The database server could not be reached or refused the login (the URL is shown without its password)."""


class JobNotFound(SvibotError, LookupError):
    pass


class NotAllowed(SvibotError, PermissionError):
    """The caller may not do this to this job (e.g. cancel someone else's)."""


class LeaseLost(SvibotError):
    """The worker no longer holds the job's lease (it expired and was reclaimed)."""
