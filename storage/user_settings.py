"""Each chat user's story defaults (/settings): quality recipe, loop, colour match, chaining, seed.

Stored per (platform, user) as one JSON object in `user_settings` (schema 4), so they outlive
restarts and are shared by every bot process on the queue. Only the keys below are accepted.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .db import Database
from .errors import N_, BadSetting

MAX_SEED = 2**31 - 1
# key -> its choices, the first being the default. "seed" is None (random) or a fixed integer.
CHOICES: dict[str, tuple[Any, ...]] = {
    "quality": ("fast", "quality"),  # the sampling recipe (engine.config.RECIPES)
    "loop": (False, True),
    "color_match": ("off", "anchor"),
    "chaining": ("svi-pro", "last-frame"),  # engine.config.CHAINING_MODES
}
KEYS = (*CHOICES, "seed")
DEFAULTS: dict[str, Any] = {**{k: v[0] for k, v in CHOICES.items()}, "seed": None}


def check_user_setting(key: str, value: Any) -> Any:
    """The value if `key` may take it; BadSetting names the key, the value and what is allowed."""
    if key == "seed":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
            raise BadSetting(N_("seed is {value!r}; it must be a whole number from 0 to {max}, or random"),
                             value=value, max=MAX_SEED)
        return value
    if key not in CHOICES:
        raise BadSetting(N_("{key!r} is not a setting; the settings are {keys}"), key=key, keys=", ".join(KEYS))
    if value not in CHOICES[key] or type(value) is not type(CHOICES[key][0]):
        allowed = ", ".join(str(c).lower() if isinstance(c, bool) else c for c in CHOICES[key])
        raise BadSetting(N_("{key} is {value!r}; it must be one of {allowed}"), key=key, value=value, allowed=allowed)
    return value


def _load(raw: str | None) -> dict[str, Any]:
    """Stored values over the defaults; a key no longer known or a value no longer valid is skipped."""
    out = dict(DEFAULTS)
    for key, value in (json.loads(raw) if raw else {}).items():
        try:
            out[key] = check_user_setting(key, value)
        except BadSetting:
            continue
    return out


class UserSettingsVerbs:
    """Mixed into `JobQueue`; needs `_db` and `_clock`."""

    _db: Database
    _clock: Callable[[], float]

    async def user_settings(self, platform: str, user_id: str) -> dict[str, Any]:
        """Every setting of one user: what they chose, the defaults for the rest."""
        row = await self._db.fetchone(
            "SELECT settings FROM user_settings WHERE platform = ? AND user_id = ?", platform, str(user_id))
        return _load(row[0] if row else None)

    async def set_user_setting(self, platform: str, user_id: str, key: str, value: Any) -> dict[str, Any]:
        """Store one setting (checked first; a bad one writes nothing); returns all of the user's settings."""
        value = check_user_setting(key, value)
        async with self._db.tx() as s:
            await self._db.serialize(s, f"settings:{platform}:{user_id}")  # two presses take turns
            row = await s.fetchone(
                "SELECT settings FROM user_settings WHERE platform = ? AND user_id = ?", platform, str(user_id))
            stored = json.loads(row[0]) if row else {}
            stored[key] = value
            await s.execute(
                """INSERT INTO user_settings (platform, user_id, settings, updated_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT (platform, user_id) DO UPDATE SET settings = excluded.settings,
                                                                 updated_at = excluded.updated_at""",
                platform, str(user_id), json.dumps(stored), self._clock())
        return _load(json.dumps(stored))
