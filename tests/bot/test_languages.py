"""Both bots answer in the user's language, end to end: the real PTB and discord.py clients against the
fake servers, with the scripted worker. The outbox renders a job's later messages (progress, captions,
done) in the language the job was requested in."""
from __future__ import annotations

import re

import discord

from bot.i18n import META_KEY, language
from tests.bot.test_discord import (  # noqa: F401 (fixtures)
    bot_config, custom_ids, fake, photo_bytes, reply_of, running_bot, scripted_worker, send_story)

from .conftest import png_bytes

CHAT = USER = 1001


def _buttons(markup: dict | None) -> list[str]:
    return [b["text"] for row in (markup or {}).get("inline_keyboard", []) for b in row]


async def _reply(fake, chat: int, index: int) -> str:
    return (await fake.wait_for(lambda: fake.texts_to(chat)[index:], what=f"reply {index} in {chat}"))[0]


# -- Telegram ----------------------------------------------------------------------------------------
async def test_telegram_german_user_gets_german_help_progress_and_done(fake_telegram, start_bot, queue, worker):
    fake = fake_telegram
    fake.user_languages[USER] = "de"
    await start_bot()
    fake.user_message(CHAT, USER, text="/help")
    help_text = await _reply(fake, CHAT, 0)
    assert help_text.startswith("Schick ein Foto und eine Geschichte; jeder Teil zwischen | wird ein Videosegment.")
    assert "Warteschlange: 0 Aufträge warten oder laufen; gerade ist kein GPU-Worker online." in help_text
    assert "/forget: alle deine Aufträge, Fotos und Videos jetzt löschen" in help_text

    fake.user_message(CHAT, USER, caption="/story eine Katze läuft | die Katze rennt", photo=png_bytes())
    queued = (await fake.wait_for(lambda: fake.sent_to(CHAT, "sendMessage")[1:], what="queued reply"))[0]
    assert queued.text.startswith("In der Warteschlange: Auftrag #1, Platz 1, Restzeit unbekannt\n"
                                  "Gerade ist kein GPU-Worker online")
    assert _buttons(queued.params["reply_markup"]) == ["❌ Abbrechen", "🔁 Neu würfeln"]
    assert (await queue.get_job(1)).meta[META_KEY] == "de"  # the outbox renders later texts from this

    worker.step_delay_s = 0.1
    await worker.run_job()
    await fake.wait_for(lambda: len(fake.sent_to(CHAT, "sendVideo")) == 3, what="2 segments and the story")
    await fake.wait_for(lambda: (fake.current_text(CHAT, queued.message_id) or "").startswith("Auftrag #1: fertig"),
                        what="the German done status")
    captions = [v.text for v in fake.sent_to(CHAT, "sendVideo")]
    assert captions[:2] == ["Segment 1/2: eine Katze läuft", "Segment 2/2: die Katze rennt"]
    assert re.fullmatch(r"Deine Geschichte \(2 Segmente, \d+ s\)", captions[2])
    edits = [e for e in fake.edits if e.message_id == queued.message_id]
    assert any(e.text.startswith("Auftrag #1: wird erzeugt [") and "\nSegment 1/2, Schritt 1/2, Restzeit ~1 Min."
               in e.text for e in edits)
    assert re.fullmatch(r"Auftrag #1: fertig, 2 Segmente, \d+ s Video\.", edits[-1].text)
    assert _buttons(edits[-1].reply_markup) == ["🔁 Neu würfeln"]
    everything = fake.texts_to(CHAT) + [e.text for e in edits] + captions
    assert not [t for t in everything if "Job #" in t or "Queued" in t]  # no English left anywhere

    # The command menu: English by default, German for German apps.
    menus = await fake.wait_for(lambda: len(fake.method_calls("setMyCommands")) >= 2 and
                                fake.method_calls("setMyCommands"), what="both command menus")
    by_language = {m.get("language_code"): {c["command"]: c["description"] for c in m["commands"]} for m in menus}
    assert by_language[None]["help"] == "how to use the bot, limits and queue length"
    assert by_language["de"]["help"] == "wie der Bot funktioniert, Grenzen und Länge der Warteschlange"
    assert set(by_language["de"]) == set(by_language[None])


async def test_telegram_unknown_and_regional_languages_fall_back(fake_telegram, start_bot):
    fake = fake_telegram
    users = {2001: "xx", 2002: "de-AT", 2003: "pt-br", 2004: None, 2005: "en-GB"}
    for user, lang in users.items():
        if lang is not None:
            fake.user_languages[user] = lang
    await start_bot()
    for user in users:
        fake.user_message(user, user, text="/cancel abc")  # private chats: chat id = user id
        fake.user_message(user, user, caption="/story a | | c", photo=png_bytes())  # a storage input error
    answers = {user: [await _reply(fake, user, 0), await _reply(fake, user, 1)] for user in users}
    english = ["'abc' is not a job number; use e.g. /cancel 12",
               "Prompt 2 of 3 is empty in 'a | | c'. Every segment needs some text between the \"|\" separators."]
    german = ["'abc' ist keine Auftragsnummer; schreib z. B. /cancel 12",
              "Prompt 2 von 3 ist leer in 'a | | c'. Jedes Segment braucht etwas Text zwischen den Trennzeichen „|“."]
    assert answers == {2001: english, 2002: german, 2003: english, 2004: english, 2005: english}


async def test_telegram_reroll_and_forget_of_a_german_user_are_german(fake_telegram, start_bot, queue, worker):
    """A button press carries the presser's language too: the new job's texts and its later messages."""
    fake = fake_telegram
    fake.user_languages[USER] = "de"
    await start_bot()
    fake.user_message(CHAT, USER, caption="/story a", photo=png_bytes())
    first = (await fake.wait_for(lambda: fake.sent_to(CHAT, "sendMessage"), what="queued reply"))[0]
    await worker.run_job()
    await fake.wait_for(lambda: (fake.current_text(CHAT, first.message_id) or "").startswith("Auftrag #1: fertig"))
    fake.press_button(CHAT, USER, first.message_id, "reroll:1")
    await fake.wait_for(lambda: fake.callback_answers, what="the button's answer")
    assert fake.callback_answers[-1]["text"] == "Auftrag #2 eingereiht."
    second = (await fake.wait_for(lambda: fake.sent_to(CHAT, "sendMessage")[1:], what="second status"))[0]
    assert second.text.startswith("In der Warteschlange: Auftrag #2")
    assert (await queue.get_job(2)).meta[META_KEY] == "de"

    fake.user_message(CHAT, USER, text="/forget")
    question = (await fake.wait_for(lambda: fake.sent_to(CHAT, "sendMessage")[2:], what="the /forget question"))[0]
    assert question.text.startswith("Damit werden deine 2 Aufträge hier mit ihren Fotos")
    assert "1 davon wartet oder läuft noch und wird gestoppt." in question.text
    assert _buttons(question.params["reply_markup"]) == ["Alles löschen", "Behalten"]


# -- Discord -----------------------------------------------------------------------------------------
OWNER, STRANGER = 1001, 2002


async def test_discord_german_locale_gets_german_replies_and_status(fake, queue, data_dir, bot_config):
    fake.user_locales[OWNER] = "de"
    async with running_bot(fake, queue, data_dir, bot_config):
        help_text = await reply_of(fake, await fake.send_interaction(fake.slash("help", OWNER)))
        assert help_text.startswith("Schick ein Foto und eine Geschichte")
        assert 'Apps > „Geschichte aus diesem Bild“.' in help_text
        english = await reply_of(fake, await fake.send_interaction(fake.slash("help", STRANGER)))
        assert english.startswith("Send a photo and a story")

        interaction = await send_story(fake, "gehen | rennen", image=photo_bytes())
        reply = await reply_of(fake, interaction)
        assert reply.startswith("In der Warteschlange: Auftrag #1, Platz 1")
        await fake.wait_for(lambda: any(m.content.startswith("Auftrag #1") for m in fake.channel_messages()))
        status = next(m for m in fake.channel_messages() if m.content.startswith("Auftrag #1"))
        labels = [c["label"] for row in status.components for c in row["components"]]
        assert labels == ["Abbrechen", "Neu würfeln"] and custom_ids(status) == ["svibot:cancel:1", "svibot:reroll:1"]
        assert (await queue.get_job(1)).meta[META_KEY] == "de"

        await scripted_worker(queue, data_dir, step_delay=0.3)
        await fake.wait_for(lambda: status.content.startswith("Auftrag #1: fertig, 2 Segmente"))
        refused = await reply_of(fake, await fake.send_interaction(fake.slash("cancel", OWNER, {"job": 99})))
        assert refused == "Es gibt keinen Auftrag #99, den du abbrechen könntest."
        target = fake.user_message(OWNER, [fake.add_attachment("dog.png", photo_bytes(), "image/png")])
        menu = await fake.send_interaction(fake.message_command("Make a story from this image", OWNER, target))
        await fake.wait_for(lambda: any(c.type == 9 for c in fake.callbacks_for(menu)))
        modal = next(c for c in fake.callbacks_for(menu) if c.type == 9).data
        field = modal["components"][0]["components"][0]
        assert (modal["title"], field["label"], field["placeholder"]) == (
            "Geschichte erstellen", "Prompts, einer pro Segment, getrennt durch |", "gehen | rennen | fliegen")
    videos = [m.content for m in fake.channel_messages() if m.uploads]
    assert videos == ["Segment 1/2: gehen", "Segment 2/2: rennen", "Deine Geschichte (2 Segmente, 2 s)"]
    shown = [e["content"] for e in status.edits if "wird erzeugt" in (e.get("content") or "")]
    assert shown and "Segment 1/2, Schritt 1/2" in shown[0]


async def test_discord_command_tree_carries_german_descriptions(fake, queue, data_dir, bot_config):
    async with running_bot(fake, queue, data_dir, bot_config):
        commands = {c["name"]: c for c in fake.commands["global"]}
    assert commands["help"]["description"] == "How to use the bot, its limits and the rules."
    assert commands["help"]["description_localizations"]["de"] == "Wie der Bot funktioniert, seine Grenzen und die Regeln."
    story_options = {o["name"]: o for o in commands["story"]["options"]}
    assert story_options["prompts"]["description_localizations"]["de"].startswith("Ein Prompt pro ~5-s-Segment")
    menu = commands["Make a story from this image"]
    assert menu["type"] == 3 and menu["name_localizations"]["de"] == "Geschichte aus diesem Bild"
    # Every Discord locale a catalogue serves (de today; es-ES and es-419 once there is an es) gets every
    # description, within Discord's 100 characters; names stay as typed everywhere.
    served = {loc.value for loc in discord.Locale if language(loc.value) != "en"}
    assert "de" in served and "en-US" not in served
    for command in commands.values():
        if command["type"] != 1:
            assert set(command["name_localizations"]) == served
            assert all(len(name) <= 32 for name in command["name_localizations"].values())
            continue
        assert not command.get("name_localizations") and set(command["description_localizations"]) == served
        for option in command["options"]:
            assert not option.get("name_localizations") and set(option["description_localizations"]) == served
        tables = [command["description_localizations"], *[o["description_localizations"] for o in command["options"]]]
        assert all(0 < len(d) <= 100 for table in tables for d in table.values())
