"""Keep secrets out of everything svibot writes: log records of any library, tracebacks, user replies.

A registered secret (a bot token, `HF_TOKEN`, a database password) is replaced in every form a URL
or a form body carries it: raw, percent-encoded (either hex case, with or without "/" kept) and
`quote_plus`. Some shapes are secret wherever they appear, registered or not: Telegram bot tokens,
Hugging Face tokens, the password of a URL, `Authorization` header values, and Discord interaction
and webhook tokens in request paths and gateway payloads (they change with every command).
"""
from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus, unquote, urlsplit

REDACTED = "<redacted>"
MIN_SECRET_CHARS = 6  # shorter strings would blank out ordinary words; the URL pattern still covers them
SECRET_ENV = ("TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
URL_ENV = ("SVIBOT_DATABASE_URL", "DATABASE_URL")  # their passwords are secrets
# Loggers that print request URLs (and with them tokens) or whole payloads at INFO and DEBUG.
NOISY_LOGGERS = ("httpx", "httpcore", "telegram.ext.ExtBot", "telegram.Bot", "discord.http",
                 "discord.gateway", "aiohttp.access", "aiohttp.client",
                 "urllib3", "huggingface_hub")

_KEEP = r"\g<keep>" + REDACTED
PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A Telegram bot token "<bot id>:<secret>", also with the colon percent-encoded.
    (re.compile(r"(?<![0-9])\d{5,}(?::|%3[Aa])[A-Za-z0-9_-]{30,}"), REDACTED),
    # A Hugging Face access token.
    (re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{20,}"), REDACTED),
    # The password in scheme://user:password@host.
    (re.compile(r"(?P<keep>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s/@]+(?=@)"), _KEEP),
    # Discord interaction and webhook tokens in REST paths: /interactions/<id>/<token>/callback.
    (re.compile(r"(?P<keep>/(?:interactions|webhooks)/\d+/)[^/\s?#'\"]+"), _KEEP),
    # "token": "..." in JSON or in a printed dict (the gateway dump of an interaction).
    (re.compile(r"""(?P<keep>['"](?:token|access_token|password|secret)['"]\s*:\s*['"])[^'"]+"""), _KEEP),
    # password=... in a key/value connection string or a query.
    (re.compile(r"(?P<keep>\bpassword=)[^\s&;]+", re.IGNORECASE), _KEEP),
    # Authorization header values.
    (re.compile(r"(?P<keep>\b(?:Bot|Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]{16,}"), _KEEP),
)


def forms(secret: str) -> set[str]:
    """Every spelling of `secret` a URL, a query string or a form body may carry."""
    encoded = {quote(secret, safe=""), quote(secret), quote_plus(secret), quote_plus(secret, safe="/")}
    lower_hex = {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), f) for f in encoded}
    return {secret} | encoded | lower_hex


class Redactor:
    """Registered secrets plus the always-secret shapes in `PATTERNS`. Thread-safe."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()
        self._exact: re.Pattern[str] | None = None

    def add(self, secret: str | None) -> None:
        if not secret or len(secret) < MIN_SECRET_CHARS:
            return
        with self._lock:
            self._secrets.add(secret)
            self._compile()

    def discard(self, secret: str) -> None:
        with self._lock:
            self._secrets.discard(secret)
            self._compile()

    def _compile(self) -> None:
        spellings = sorted({f for s in self._secrets for f in forms(s)}, key=len, reverse=True)
        self._exact = re.compile("|".join(map(re.escape, spellings))) if spellings else None

    def __call__(self, text: str) -> str:
        exact = self._exact
        if exact is not None:
            text = exact.sub(REDACTED, text)
        for pattern, replacement in PATTERNS:
            text = pattern.sub(replacement, text)
        return text


REDACTOR = Redactor()


def redact(text: object) -> str:
    """`str(text)` with every secret replaced by "<redacted>"."""
    return REDACTOR(str(text))


def add_secret(secret: str | None) -> None:
    """Register a secret and make sure every log record is redacted from now on."""
    REDACTOR.add(secret)
    install_log_redaction()


def forget_secret(secret: str) -> None:
    """Undo `add_secret` (tests register throwaway tokens)."""
    REDACTOR.discard(secret)


def secrets_from_env(env: Mapping[str, str]) -> list[str]:
    """The secrets an environment holds: tokens, and the passwords of database URLs."""
    found = [env[name].strip() for name in SECRET_ENV if env.get(name, "").strip()]
    for name in URL_ENV:
        raw = env.get(name, "").strip()
        if not raw:
            continue
        try:
            password = urlsplit(raw).password
        except ValueError:  # a malformed URL: treat all of it as secret
            password = raw
        if password:  # as written in the URL, and as the driver sends it
            found += [password] if unquote(password) == password else [password, unquote(password)]
    return found


def redact_record(record: logging.LogRecord) -> None:
    """Redact a record's message, traceback and stack text in place."""
    try:
        message = record.getMessage()
    except Exception:  # a malformed record; logging reports it when it formats the record
        return
    clean = REDACTOR(message)
    if clean != message or record.args:
        # Freeze the text now: arguments are live objects that a library may change after logging
        # (PTB turns a logged file path into a URL with the token), and handlers format later.
        record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        # Formatters reuse a cached exc_text, so every handler prints this redacted traceback.
        record.exc_text = REDACTOR(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = REDACTOR(record.exc_text)
    if record.stack_info:
        record.stack_info = REDACTOR(record.stack_info)


def install_log_redaction() -> None:
    """Redact every log record as it is created, whichever logger makes it and whichever handler prints it.

    A record factory sees records of every library at every level, also those of loggers that do
    not propagate and of handlers added later; a filter on some loggers or handlers would not.
    """
    current = logging.getLogRecordFactory()
    if getattr(current, "redacting", False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = current(*args, **kwargs)
        redact_record(record)
        return record

    factory.redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def quiet_noisy_loggers(level: int | str, names: Iterable[str] = NOISY_LOGGERS) -> None:
    """Libraries that log request URLs or payloads stay at WARNING unless svibot itself runs at DEBUG."""
    numeric = logging.getLevelName(level) if isinstance(level, str) else level
    quiet = logging.DEBUG if numeric == logging.DEBUG else logging.WARNING
    for name in names:
        logging.getLogger(name).setLevel(quiet)
