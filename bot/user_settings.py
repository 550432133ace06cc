"""Each user's story defaults (/settings), platform-neutral: what a button press changes, what a
command line sets, and what a new story takes from them. Storage checks and keeps the values."""
from __future__ import annotations

import random
from typing import Any

from storage.errors import N_, BadSetting
from storage.queue import JobQueue
from storage.user_settings import CHOICES, DEFAULTS, KEYS, MAX_SEED, check_user_setting

ON_OFF = {"on": True, "true": True, "yes": True, "off": False, "false": False, "no": False}


def next_value(key: str, current: Any) -> Any:
    """A button press: the next choice; for the seed, random <-> a newly drawn fixed seed."""
    if key == "seed":
        return random.randint(0, MAX_SEED) if current is None else None
    if key not in CHOICES:
        raise BadSetting(N_("{key!r} is not a setting; the settings are {keys}"), key=key, keys=", ".join(KEYS))
    choices = CHOICES[key]
    return choices[(choices.index(current) + 1) % len(choices)] if current in choices else choices[0]


async def press(queue: JobQueue, platform: str, user_id: str, key: str) -> dict[str, Any]:
    """Advance one setting of the user; returns all their settings."""
    current = (await queue.user_settings(platform, user_id)).get(key)
    return await queue.set_user_setting(platform, user_id, key, next_value(key, current))


def parse_words(words: list[str]) -> tuple[str, Any]:
    """`/settings seed 42`, `seed random`, `loop on`, `quality quality` -> (key, value); checked."""
    if len(words) != 2:
        raise BadSetting(N_("{words!r} is not a setting; write e.g. seed 42, seed random or loop on"),
                         words=" ".join(words))
    key, raw = words[0].lower().replace("colour", "color"), words[1].lower()
    if key == "color":
        key = "color_match"
    value: Any = raw
    if key == "seed":
        value = None if raw == "random" else int(raw) if raw.isdigit() else raw
    elif key == "loop":
        value = ON_OFF.get(raw, raw)
    return key, check_user_setting(key, value)


def story_defaults(values: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """The job settings and seed a new story takes from the user's settings.

    Only what differs from the defaults is passed, so a user who changed nothing queues exactly
    the jobs they did before, and a worker without an option never sees it unasked.
    """
    settings = {k: values[k] for k in CHOICES if k in values and values[k] != DEFAULTS[k]}
    return settings, values.get("seed")
