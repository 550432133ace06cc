"""Blocked words: matching rules, and a refused story over the fake Bot API with nothing queued."""
from __future__ import annotations

import pytest

from bot.config import BotConfig
from bot.moderation import BlockedWords
from storage import Limits
from storage.errors import BadSetting
from svibot.config import load_bot

from .conftest import png_bytes

CHAT = USER = 1001


def test_whole_words_ignoring_case_and_accents():
    blocked = BlockedWords.parse("Café, gore ,  BAD  thing")
    assert blocked.words == ("bad thing", "cafe", "gore")
    assert blocked.find("a CAFÉ at night") == "cafe"
    assert blocked.find("a cafe") == "cafe"
    assert blocked.find("Gore!") == "gore"
    assert blocked.find("a bad\tthing happens") == "bad thing"
    # similar-looking but different words pass
    assert blocked.find("a cafeteria at night") is None
    assert blocked.find("Al Gore's speech") == "gore"  # an apostrophe ends a word
    assert blocked.find("gorge and gored") is None
    assert blocked.find("a bad day, one thing") is None
    assert not BlockedWords.parse("") and BlockedWords.parse("").find("anything") is None


def test_a_file_of_words_with_comments(tmp_path):
    path = tmp_path / "blocked.txt"
    path.write_text("# one a line\nÉpée\n\nnaked  # trailing comment\n", encoding="utf-8")
    blocked = BlockedWords.parse(str(path))
    assert blocked.words == ("epee", "naked")
    assert blocked.find("an EPEE fight") == "epee"
    with pytest.raises(ValueError, match="looks like a file path.*no such file"):
        BlockedWords.parse(str(tmp_path / "missing.txt"))
    assert load_bot({"SVIBOT_BLOCKED_WORDS": str(path)}, Limits()).blocked_words == blocked
    with pytest.raises(BadSetting, match="SVIBOT_BLOCKED_WORDS: .*no such file"):
        load_bot({"SVIBOT_BLOCKED_WORDS": str(tmp_path / "missing.txt")}, Limits())


async def test_blocked_story_is_refused_neutrally_and_nothing_is_queued(fake_telegram, start_bot, queue):
    fake = fake_telegram
    await start_bot(BotConfig(blocked_words=BlockedWords.parse("gore,cafe"), poll_interval_s=0.05))
    fake.user_message(CHAT, USER, caption="/story a cat walks | the cat enters a Café", photo=png_bytes())
    refusal = (await fake.wait_for(lambda: fake.texts_to(CHAT), what="the refusal"))[0]
    assert refusal == "This story can't be made here. Please change its wording and try again."
    assert "caf" not in refusal.lower()  # neutral: the word is not repeated
    assert await queue.list_jobs() == []
    assert fake.method_calls("getFile") == []  # refused before the photo was downloaded
    assert await queue.refusal_count() == 1

    fake.user_message(CHAT, USER, caption="/story a cat walks into a cafeteria", photo=png_bytes())
    queued = await fake.wait_for(lambda: fake.texts_to(CHAT)[1:], what="the second reply")
    assert queued[0].startswith("Queued: job #1")
    assert [j.prompts for j in await queue.list_jobs()] == [["a cat walks into a cafeteria"]]
    assert await queue.refusal_count() == 1
