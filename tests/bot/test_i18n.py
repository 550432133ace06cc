"""The message catalogues: complete, in step with the code and the compiled .mo files, and the fallback
from regional tags and unknown languages to English."""
from __future__ import annotations

import gettext
import io
import string
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from bot import i18n, texts
from bot.i18n import Text, _, render
from storage.config import Limits
from storage.errors import PhotoTooLarge
from storage.validate import check_photo_size, parse_prompts

REPO = Path(__file__).resolve().parents[2]
# The same keywords as `make messages` (Babel's defaults add _, N_, ngettext, pgettext, ...).
KEYWORDS = {**DEFAULT_KEYWORDS, "_n": (1, 2), "_p": ((1, "c"), 2), "locale_str": None}
TRANSLATED = [p.parent.parent.name for p in sorted(i18n.LOCALE_DIR.glob("*/LC_MESSAGES/svibot.po"))]


def source_messages() -> dict[tuple[str | None, str], tuple[str, ...]]:
    """(context, msgid) -> (msgid, msgid_plural?) of every marked text in bot/ and storage/, freshly extracted."""
    found = {}
    for folder in ("bot", "storage"):
        for _file, _line, message, _comments, context in extract_from_dir(
                REPO / folder, keywords=KEYWORDS, comment_tags=()):
            forms = message if isinstance(message, tuple) else (message,)
            found[(context, forms[0])] = forms
    return found


def fields(template: str) -> set[tuple[str, str | None, str | None]]:
    """The `{name!conv:spec}` fields of a str.format template."""
    return {(name, conv, spec) for _lit, name, spec, conv in string.Formatter().parse(template) if name is not None}


def po(lang: str) -> Catalog:
    with (i18n.LOCALE_DIR / lang / "LC_MESSAGES" / "svibot.po").open("rb") as f:
        return read_po(f)


def test_german_is_there():
    assert "de" in TRANSLATED and i18n.languages() == ("en", *TRANSLATED)


def test_the_template_is_up_to_date_with_the_code():
    with (i18n.LOCALE_DIR / "svibot.pot").open("rb") as f:
        template = {(m.context, m.id[0] if isinstance(m.id, tuple) else m.id) for m in read_po(f) if m.id}
    source = source_messages()
    assert len(source) > 150  # the extraction found the texts (a wrong keyword would find few)
    assert template == set(source), "run `make messages`"


@pytest.mark.parametrize("lang", TRANSLATED)
def test_every_text_is_translated_with_the_same_placeholders(lang):
    catalog = po(lang)
    assert catalog.num_plurals >= 1
    problems = []
    for key, forms in source_messages().items():
        message = catalog.get(key[1], context=key[0])
        if message is None or message.fuzzy:
            problems.append(f"{key}: {'missing' if message is None else 'fuzzy'}")
            continue
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        if len(forms) == 2 and len(strings) != catalog.num_plurals:
            problems.append(f"{key}: {len(strings)} plural forms, the catalogue has {catalog.num_plurals}")
        wanted = set().union(*(fields(f) for f in forms))
        for translated in strings:
            if not translated.strip():
                problems.append(f"{key}: empty")
            elif fields(translated) != wanted:
                problems.append(f"{key}: placeholders {sorted(fields(translated))} != {sorted(wanted)}")
    in_catalogue = {(m.context, m.id[0] if isinstance(m.id, tuple) else m.id) for m in catalog if m.id}
    obsolete = in_catalogue - set(source_messages())
    assert not problems and not obsolete, problems + [f"{key}: no longer in the code" for key in obsolete]


@pytest.mark.parametrize("lang", TRANSLATED)
def test_the_compiled_catalogue_matches_its_source(lang):
    compiled = io.BytesIO()
    write_mo(compiled, po(lang))
    fresh = gettext.GNUTranslations(io.BytesIO(compiled.getvalue()))
    with i18n.catalogue_path(lang).open("rb") as f:
        committed = gettext.GNUTranslations(f)
    # gettext's own tables, less the header (its Generated-By names the Babel release that compiled it)
    messages = [{k: v for k, v in t._catalog.items() if k != ""} for t in (committed, fresh)]  # noqa: SLF001
    assert messages[0] == messages[1], "run `make catalogues`"
    assert len(messages[0]) > 150
    assert [committed.plural(n) for n in range(5)] == [fresh.plural(n) for n in range(5)]


# -- fallback --------------------------------------------------------------------------------------
@pytest.mark.parametrize("tag, norm, lang", [
    ("de", "de", "de"), ("DE", "de", "de"), ("de-AT", "de_AT", "de"), ("de_ch", "de_CH", "de"),
    ("pt_BR", "pt_BR", "en"), ("pt-br", "pt_BR", "en"), ("xx", "xx", "en"), ("en-GB", "en_GB", "en"),
    ("zh-Hant-TW", "zh_Hant_TW", "en"), (None, None, "en"), ("", None, "en"), ("../../etc", None, "en"),
    ("de" * 40, None, "en"),
])
def test_language_tags_fall_back_to_their_language_then_english(tag, norm, lang):
    assert i18n.normalize(tag) == norm
    assert i18n.language(tag) == lang
    expected = {"de": "Auftrag #3: fertig, 1 Segment, 5 s Video.", "en": "Job #3: done, 1 segment, 5 s of video."}
    assert render(texts.done_text(3, 1, 5.0), tag) == expected[lang]


def test_a_regional_catalogue_falls_back_entry_by_entry(tmp_path, monkeypatch):
    """pt_BR -> pt -> English, per entry: a missing entry is looked up in the next catalogue of the chain."""
    def compile_to(lang: str, entries: dict[str, str]) -> None:
        catalog = Catalog(locale=lang.split("_")[0])
        for msgid, msgstr in entries.items():
            catalog.add(msgid, msgstr)
        path = tmp_path / lang / "LC_MESSAGES" / "svibot.mo"
        path.parent.mkdir(parents=True)
        with path.open("wb") as f:
            write_mo(f, catalog)

    compile_to("pt", {"Keep": "Manter", "Cancel": "Cancelar"})
    compile_to("pt_BR", {"Keep": "Guardar"})
    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)
    i18n._translations.cache_clear()
    try:
        assert [render(_("Keep"), "pt-BR"), render(_("Cancel"), "pt-BR"), render(_("Re-roll"), "pt-BR")] == \
            ["Guardar", "Cancelar", "Re-roll"]
        assert render(_("Keep"), "pt-PT") == "Manter" and i18n.language("pt-PT") == "pt"
        assert i18n.candidates("pt-BR") == ("pt_BR", "pt")
    finally:
        i18n._translations.cache_clear()


# -- rendering -------------------------------------------------------------------------------------
def test_numbers_and_nested_texts_are_rendered_in_the_language():
    assert render(texts.video_too_big_text(12_345_678, 10_000_000), "de").startswith(
        "Dieses Video hat auch nach dem Neukodieren 12,3 MB")
    assert render(texts.progress_text(4, 1, 2, 5, 10, None), "de") == \
        "Auftrag #4: wird erzeugt [########--] 75 %\nSegment 2/2, Schritt 5/10, Restzeit unbekannt"
    assert str(texts.progress_text(4, 1, 2, 5, 10, 300)) == \
        "Job #4: generating [########--] 75%\nsegment 2/2, step 5/10, ETA ~5 min"


def test_user_text_is_never_a_template():
    """A prompt with braces is a value: it is shown as sent, in every language."""
    caption = texts.segment_caption(0, 1, "a {cat} {0} }{")
    assert render(caption, "de") == "Segment 1/1: a {cat} {0} }{" and str(caption) == "Segment 1/1: a {cat} {0} }{"


def test_input_errors_from_storage_keep_english_and_translate():
    with pytest.raises(PhotoTooLarge) as err:
        check_photo_size(30 * 2**20, Limits())
    assert str(err.value) == "The photo is 30.0 MB; the limit is 20 MB. Send a smaller or compressed photo."
    assert render(err.value, "de") == "Das Foto hat 30,0 MB; erlaubt sind höchstens 20 MB. Schick ein kleineres oder " \
                                      "komprimiertes Foto."
    with pytest.raises(ValueError) as err:
        parse_prompts("a | | c", Limits())
    assert render(err.value, "de") == "Prompt 2 von 3 ist leer in 'a | | c'. Jedes Segment braucht etwas Text " \
                                      "zwischen den Trennzeichen „|“."
    assert render(ValueError("no template"), "de") == "no template"


def test_text_repr_and_english_str():
    text = Text("Job #{job} failed: {error}", {"job": 1, "error": "boom"})
    assert str(text) == "Job #1 failed: boom" and "Job #{job}" in repr(text)
