"""Per-story options next to the prompts: `loop` (the story ends on its first frame) and `color_match`.

Chat front ends take them as words before the prompts: `/story loop: walk | run | fly`, `loop:0.8` (a looser
end), `color:anchor`. The CLI and Discord take them as flags and parameters. Every front end checks the values
here, so a bad one gets the same message everywhere and nothing is queued. They are stored in the job's
settings under the engine's names (`loop`, `loop_strength`, `color_match`), so re-rolls and resumes keep them.
"""
from __future__ import annotations

import math
import re
from typing import Any

from .errors import N_, BadSetting
from .validate import excerpt, normalize_prompt

COLOR_MATCH_MODES = ("off", "anchor")
# The words a story may start with, and the setting each one sets.
OPTION_NAMES = {"loop": "loop", "color": "color_match", "colour": "color_match", "color_match": "color_match"}
_OPTION_WORD = re.compile(r"(?P<name>[A-Za-z_]+):(?P<value>[^\s|]*)(?=\s|\||$)")
_ON, _OFF = ("", "on", "yes", "true"), ("off", "no", "false")


def split_options(text: str | None) -> tuple[dict[str, Any], str]:
    """The option words at the start of a story, as settings, and the rest of the text (the prompts).

    A word only counts as an option when its name is one of OPTION_NAMES, so a prompt such as
    "note: the cat sleeps" stays a prompt. A known name with a bad value raises `BadSetting`.
    """
    rest = normalize_prompt(text or "").lstrip()
    settings: dict[str, Any] = {}
    while (m := _OPTION_WORD.match(rest)) and m["name"].lower() in OPTION_NAMES:
        key = OPTION_NAMES[m["name"].lower()]
        settings.update(parse_loop(m["value"]) if key == "loop" else {key: parse_color_match(m["value"])})
        rest = rest[m.end():].lstrip()
    return settings, rest


def parse_loop(value: str) -> dict[str, Any]:
    """`loop:` / `loop:on` -> a loop; `loop:off` -> none; `loop:0.8` -> a loop with end strength 0.8."""
    word = value.strip().lower()
    if word in _ON:
        return {"loop": True}
    if word in _OFF:
        return {"loop": False}
    try:
        strength = float(word)
    except ValueError:
        raise BadSetting(N_("loop:{value} is not a loop setting; write loop: to end the story on its first frame, "
                            "or loop:0.8 for a looser end (a strength above 0 and at most 1)."),
                         value=excerpt(value, 20)) from None
    check_loop_strength(strength, shown=f"loop:{excerpt(value, 20)}")
    return {"loop": True, "loop_strength": strength}


def parse_color_match(value: str) -> str:
    mode = value.strip().lower()
    if mode not in COLOR_MATCH_MODES:
        raise BadSetting(N_("color:{value} is not a colour match mode; use color:anchor to keep every later "
                            "segment's colours on the photo's, or color:off."), value=excerpt(value, 20))
    return mode


def check_loop_strength(strength: object, shown: str | None = None) -> None:
    """The end-frame strength of a loop: above 0 (0 would be no end frame at all) and at most 1 (a hard lock)."""
    ok = isinstance(strength, (int, float)) and not isinstance(strength, bool) and math.isfinite(strength)
    if not ok or not 0.0 < float(strength) <= 1.0:
        raise BadSetting(N_("{shown}: the loop strength must be above 0 and at most 1 (1 ends exactly on the "
                            "first frame; lower values loosen the end)"),
                         shown=shown or f"loop_strength is {strength!r}")


def check_story_options(settings: dict[str, Any]) -> None:
    """Check the option values a front end put into a job's settings (e.g. Discord's parameters)."""
    if "loop" in settings and not isinstance(settings["loop"], bool):
        raise BadSetting(N_("loop must be true or false but is {value!r}"), value=excerpt(str(settings["loop"]), 20))
    if "loop_strength" in settings:
        check_loop_strength(settings["loop_strength"])
    if "color_match" in settings and settings["color_match"] not in COLOR_MATCH_MODES:
        raise BadSetting(N_("color_match must be one of {allowed} but is {value!r}"),
                         allowed=", ".join(COLOR_MATCH_MODES), value=excerpt(str(settings["color_match"]), 20))
