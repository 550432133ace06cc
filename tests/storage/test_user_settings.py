"""Per-user story defaults (/settings) on both backends: defaults, updates, checks, restarts."""
from __future__ import annotations

import pytest

from storage.errors import BadSetting
from storage.user_settings import DEFAULTS


async def test_a_new_user_has_the_defaults(make_queue):
    q = await make_queue()
    assert await q.user_settings("telegram", "1") == {
        "quality": "fast", "loop": False, "color_match": "off", "chaining": "svi-pro", "seed": None}
    assert DEFAULTS == await q.user_settings("discord", "1")


async def test_settings_are_per_platform_and_user_and_survive_reopening(make_queue):
    q = await make_queue()
    await q.set_user_setting("telegram", "1", "quality", "quality")
    await q.set_user_setting("telegram", "1", "loop", True)
    both = await q.set_user_setting("telegram", "1", "seed", 1234)
    assert both["quality"] == "quality" and both["loop"] is True and both["seed"] == 1234
    await q.close()

    q2 = await make_queue()  # a restart: a new connection to the same database
    assert await q2.user_settings("telegram", "1") == {**DEFAULTS, "quality": "quality", "loop": True, "seed": 1234}
    assert await q2.user_settings("telegram", "2") == DEFAULTS  # another user
    assert await q2.user_settings("discord", "1") == DEFAULTS  # the same id on another platform
    assert (await q2.set_user_setting("telegram", "1", "seed", None))["seed"] is None  # back to random


@pytest.mark.parametrize("key, value, message", [
    ("quality", "ultra", "quality is 'ultra'; it must be one of fast, quality"),
    ("loop", "yes", "loop is 'yes'; it must be one of false, true"),
    ("chaining", "svi", "chaining is 'svi'; it must be one of svi-pro, last-frame"),
    ("seed", -1, "seed is -1; it must be a whole number from 0 to 2147483647, or random"),
    ("seed", 2**31, "seed is 2147483648"),
    ("steps", 50, "'steps' is not a setting"),
])
async def test_a_bad_setting_is_refused_by_name_and_writes_nothing(make_queue, key, value, message):
    q = await make_queue()
    with pytest.raises(BadSetting, match=message.replace("(", r"\(").replace(")", r"\)")):
        await q.set_user_setting("telegram", "1", key, value)
    assert await q.user_settings("telegram", "1") == DEFAULTS
