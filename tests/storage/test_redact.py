"""Secrets never reach any log record, in any form, from any logger at any level."""
from __future__ import annotations

import io
import logging
import re
from urllib.parse import quote, quote_plus

import pytest

from storage.redact import (
    NOISY_LOGGERS,
    REDACTED,
    add_secret,
    forget_secret,
    quiet_noisy_loggers,
    redact,
    secrets_from_env,
)

TG_TOKEN = "7712345678:AAHk3-q9Zr_5yXbLmN0pQw2eRtYuIoPaSdF"
ODD_SECRET = "pa ss/w:rd+&=?%é"  # every character a URL encoder touches


@pytest.fixture
def secret():
    add_secret(ODD_SECRET)
    yield ODD_SECRET
    forget_secret(ODD_SECRET)


def spellings(secret: str) -> dict[str, str]:
    lower_hex = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(secret, safe=""))
    return {"raw": secret, "quote": quote(secret, safe=""), "quote-keep-slash": quote(secret),
            "quote_plus": quote_plus(secret), "lower-hex": lower_hex}


@pytest.mark.parametrize("form", ["raw", "quote", "quote-keep-slash", "quote_plus", "lower-hex"])
def test_a_registered_secret_is_redacted_in_every_encoding(secret, form):
    spelled = spellings(secret)[form]
    text = redact(f"GET https://host/x?key={spelled}&y=1")
    assert spelled not in text and text == f"GET https://host/x?key={REDACTED}&y=1"


@pytest.mark.parametrize("raw, leaked", [
    (f"GET https://api.telegram.org/file/bot{quote(TG_TOKEN, safe='')}/photos/a.jpg", quote(TG_TOKEN, safe="")),
    (f"POST https://api.telegram.org/bot{TG_TOKEN}/getMe", TG_TOKEN),
    ("download with token hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123"),
    ("connecting to postgresql://svibot:s3cr%40t-pw@db.example.com:5432/q", "s3cr%40t-pw"),
    ("host=db user=svibot password=hunter22 dbname=q", "hunter22"),
    ("POST https://discord.com/api/v10/interactions/123/aW50ZXJhY3Rpb246MTIzOmFiYw/callback",
     "aW50ZXJhY3Rpb246MTIzOmFiYw"),
    ("PATCH https://discord.com/api/v10/webhooks/42/aW50ZXJhY3Rpb246MTIzOmFiYw/messages/@original",
     "aW50ZXJhY3Rpb246MTIzOmFiYw"),
    ("WebSocket Event: {'t': 'INTERACTION_CREATE', 'd': {'id': '1', 'token': 'aW50ZXJhY3Rpb24'}}", "aW50ZXJhY3Rpb24"),
    ('{"token": "aW50ZXJhY3Rpb24", "id": 1}', "aW50ZXJhY3Rpb24"),
    ("headers {'Authorization': 'Bot MTIzNDU2Nzg5.abcdef.ghijklmnopqrstuvwxyz'}", "MTIzNDU2Nzg5.abcdef.ghijklmnopqrstuvwxyz"),
], ids=["tg-percent-encoded", "tg-raw", "hf", "db-url", "dsn", "interaction-path", "webhook-path",
        "gateway-dict", "json", "authorization"])
def test_secret_shapes_are_redacted_even_when_not_registered(raw, leaked):
    out = redact(raw)
    assert leaked not in out and REDACTED in out


def test_ordinary_text_is_left_alone():
    text = "Job #12: segment 2/3, step 4/8 at http://127.0.0.1:8080/api@v10 on 2026-01-02 12:34:56"
    assert redact(text) == text


def test_every_log_record_is_redacted_whatever_its_logger_level_or_handler(secret):
    # A logger that does not propagate and has its own handler: filters on the root would miss it.
    stream = io.StringIO()
    lonely = logging.getLogger("some.library.deep.inside")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    lonely.addHandler(handler)
    lonely.propagate, lonely.level = False, logging.DEBUG
    try:
        lonely.debug("request to %s", f"https://x/bot{quote_plus(secret)}/getMe")
        lonely.info("%(url)s", {"url": f"https://x/?k={quote(secret, safe='')}"})
        try:
            raise ConnectionError(f"cannot reach https://x/{secret}/y")
        except ConnectionError:
            lonely.exception("failed")
        lonely.warning("where", stack_info=True, extra={"note": "stack frames are redacted too"})
    finally:
        lonely.removeHandler(handler)
        lonely.propagate = True
    printed = stream.getvalue()
    for form in spellings(secret).values():
        assert form not in printed
    assert printed.count(REDACTED) >= 3 and "ConnectionError" in printed and "Stack (most recent call last)" in printed


def test_secrets_from_env_takes_tokens_and_database_passwords():
    env = {"TELEGRAM_BOT_TOKEN": " 1:abcdef ", "DISCORD_BOT_TOKEN": "", "HF_TOKEN": "hf_x123456",
           "SVIBOT_DATABASE_URL": "postgresql://bot:pw%21secret@db/q", "OTHER": "ignored"}
    assert secrets_from_env(env) == ["1:abcdef", "hf_x123456", "pw%21secret", "pw!secret"]
    assert secrets_from_env({"SVIBOT_DATABASE_URL": "sqlite:///x.db"}) == []


def test_noisy_http_loggers_stay_at_warning_unless_debugging():
    saved = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    try:
        quiet_noisy_loggers("INFO")
        assert {logging.getLogger(n).level for n in ("httpx", "discord.http", "discord.gateway")} == {logging.WARNING}
        quiet_noisy_loggers(logging.DEBUG)
        assert logging.getLogger("httpx").level == logging.DEBUG
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
