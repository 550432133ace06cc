"""Texts in the user's language: gettext catalogues under bot/locale, looked up when a text is shown.

A text is built as a `Text` (its English msgid and the values it shows) wherever it arises, even deep
in a use case or inside an exception, and rendered with `render(value, lang)` only at the edge that
sends it, where the language is known: Telegram's `language_code`, Discord's `interaction.locale`, or,
for the messages of a queued job that the outbox sends later, the language stored with the job
(`Job.meta[META_KEY]`). The msgids are the English texts, so a language without a catalogue, or an
entry missing from one, reads in English. A regional tag falls back to its language: de-AT -> de,
pt_BR -> pt -> English.
"""
from __future__ import annotations

import functools
import gettext
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOMAIN = "svibot"
LOCALE_DIR = Path(__file__).with_name("locale")
SOURCE_LANGUAGE = "en"  # the language of the msgids; it needs no catalogue
META_KEY = "lang"  # where a job keeps its requester's language for the outbox
MAX_TAG_CHARS = 35  # a BCP 47 tag is rarely longer; anything longer is not one we can use
_TAG = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")


def normalize(tag: object) -> str | None:
    """A language tag in gettext's form: "de-AT" -> "de_AT", "pt-br" -> "pt_BR", "DE" -> "de".

    Takes a string or a `discord.Locale`; None for no tag or anything that is not a language tag.
    """
    if tag is None:
        return None
    raw = str(getattr(tag, "value", tag)).strip()
    if len(raw) > MAX_TAG_CHARS or not _TAG.fullmatch(raw):
        return None
    first, *rest = re.split(r"[-_]", raw)
    # Region subtags are upper case (AT, BR), script subtags title case (Hant), others as sent.
    rest = [p.upper() if len(p) == 2 else p.title() if len(p) == 4 and p.isalpha() else p for p in rest]
    return "_".join([first.lower(), *rest])


def candidates(tag: object) -> tuple[str, ...]:
    """The catalogues to try, most specific first: "zh-Hant-TW" -> zh_Hant_TW, zh_Hant, zh."""
    norm = normalize(tag)
    if norm is None:
        return ()
    parts = norm.split("_")
    return tuple("_".join(parts[:i]) for i in range(len(parts), 0, -1))


def catalogue_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.mo"


def languages() -> tuple[str, ...]:
    """Every language the bots speak: English and each compiled catalogue."""
    found = sorted(p.parent.parent.name for p in LOCALE_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.mo"))
    return (SOURCE_LANGUAGE, *[lang for lang in found if lang != SOURCE_LANGUAGE])


@functools.lru_cache(maxsize=128)
def _translations(norm: str | None) -> gettext.NullTranslations:
    chain: list[gettext.NullTranslations] = []
    for lang in candidates(norm):
        path = catalogue_path(lang)
        if path.is_file():
            with path.open("rb") as f:
                chain.append(gettext.GNUTranslations(f))
    if not chain:
        return gettext.NullTranslations()  # English: every msgid stands for itself
    for specific, general in zip(chain, chain[1:]):
        specific.add_fallback(general)  # an entry missing in de_AT is looked up in de, then English
    return chain[0]


def translations(tag: object) -> gettext.NullTranslations:
    """The catalogue chain for a language tag; unknown tags get English."""
    return _translations(normalize(tag))


def language(tag: object) -> str:
    """The language a user with this tag is answered in: "de-AT" -> "de", "xx" -> "en"."""
    for lang in candidates(tag):
        if catalogue_path(lang).is_file():
            return lang
    return SOURCE_LANGUAGE


def job_language(job: Any) -> str | None:
    """The language tag a job was requested in (kept in its meta); None (English) for older jobs."""
    return normalize(job.meta.get(META_KEY))


def job_meta(tag: object) -> dict[str, str]:
    """The meta entry that makes a new job's later messages come in the requester's language."""
    norm = normalize(tag)
    return {} if norm is None else {META_KEY: norm}


class _Formatter(string.Formatter):
    """str.format with the catalogue's decimal separator in floats ("1,5 MB" in German)."""

    def __init__(self, decimal: str) -> None:
        super().__init__()
        self.decimal = decimal

    def format_field(self, value: Any, format_spec: str) -> str:
        out = super().format_field(value, format_spec)
        return out.replace(".", self.decimal) if isinstance(value, float) and self.decimal != "." else out


@dataclass(frozen=True, eq=False)
class Text:
    """One translatable message and its values, rendered in a language later.

    `params` fill the `{name}` fields of the msgid (and of its translation); a value that is itself a
    `Text` or `Lines` is rendered in the same language. A plural message also has `{n}`.
    """

    msgid: str
    params: Mapping[str, Any] = field(default_factory=dict)
    plural: str | None = None
    n: int | None = None
    context: str | None = None

    def render(self, lang: object = None) -> str:
        t = translations(lang)
        if self.plural is not None:
            template = (t.npgettext(self.context, self.msgid, self.plural, self.n) if self.context
                        else t.ngettext(self.msgid, self.plural, self.n))
        else:
            template = t.pgettext(self.context, self.msgid) if self.context else t.gettext(self.msgid)
        if not self.params and self.plural is None:
            return template  # nothing to fill in: braces in it are text
        values = {k: render(v, lang) if isinstance(v, (Text, Lines)) else v for k, v in self.params.items()}
        if self.plural is not None:
            values.setdefault("n", self.n)
        # The decimal separator is a catalogue entry too (written out for the extraction), so adding a
        # language needs no code.
        return _Formatter(t.pgettext("decimal separator", ".")).format(template, **values)

    def __str__(self) -> str:
        return self.render(SOURCE_LANGUAGE)

    def __repr__(self) -> str:
        return f"Text({self.msgid!r}, {dict(self.params)!r})"


@dataclass(frozen=True, eq=False)
class Lines:
    """Texts (or verbatim strings) shown one after another, joined by `sep`."""

    parts: tuple[Any, ...]
    sep: str = "\n"

    def __init__(self, parts: Iterable[Any], sep: str = "\n") -> None:
        object.__setattr__(self, "parts", tuple(parts))
        object.__setattr__(self, "sep", sep)

    def render(self, lang: object = None) -> str:
        return self.sep.join(render(p, lang) for p in self.parts)

    def __str__(self) -> str:
        return self.render(SOURCE_LANGUAGE)


# The marking functions the message extraction looks for (see the README: pybabel's -k options).
def _(msgid: str, /, **params: Any) -> Text:
    return Text(msgid, params)


def _n(singular: str, plural: str, n: int, /, **params: Any) -> Text:
    return Text(singular, params, plural=plural, n=n)


def _p(context: str, msgid: str, /, **params: Any) -> Text:
    return Text(msgid, params, context=context)


def N_(msgid: str) -> str:
    """Marks a string for the catalogues that is looked up elsewhere (a command name Discord translates)."""
    return msgid


def render(value: Any, lang: object = None) -> str:
    """A `Text`, `Lines`, a refusal or a bad-input error in the language of `lang`; a str as it is.

    An exception whose one argument is a `Text` (`AccessDenied` and the bot's own input errors) shows
    that text; a `storage.errors.InputError` carries its English template and values, which are looked
    up like any msgid; any other exception shows `str(err)`.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, (Text, Lines)):
        return value.render(lang)
    if isinstance(value, BaseException):
        if len(value.args) == 1 and isinstance(value.args[0], (Text, Lines)):
            return value.args[0].render(lang)
        template = getattr(value, "template", None)
        if isinstance(template, str):
            return Text(template, getattr(value, "params", None) or {}).render(lang)
    return str(value)
