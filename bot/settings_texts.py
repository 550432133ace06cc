"""The texts of /settings on both bots: the buttons, the summary and the answer to a press."""
from __future__ import annotations

from .i18n import Lines, Text, _, _p

SETTING_NAMES = {"quality": _("Quality"), "loop": _("Loop"), "color_match": _("Colour match"),
                 "chaining": _("Chaining"), "seed": _("Seed")}
NOT_YOUR_SETTINGS = _("These buttons change someone else's settings. Send /settings for yours.")


def setting_value(key: str, value: object) -> Text | str:
    """Choices are shown as written in commands (fast, anchor, ...); on/off and random in words."""
    if key == "seed":
        return _p("seed", "random") if value is None else str(value)
    if isinstance(value, bool):
        return _p("setting", "on") if value else _p("setting", "off")
    return str(value)


def setting_button(key: str, value: object) -> Text:
    return _("{name}: {value}", name=SETTING_NAMES[key], value=setting_value(key, value))


def settings_text(values: dict, command_prefix: str = "/") -> Lines:
    return Lines([
        _("Your defaults for new stories (what you write in a story command wins):"),
        *[Lines(["  ", setting_button(key, values[key])], sep="") for key in SETTING_NAMES],
        _("Tap a button to change one. Quality: fast (4 steps) or quality (50 steps, much slower). "
          "Loop: the video ends on the photo. Colour match anchor: later segments keep the photo's colours. "
          "Chaining: svi-pro or last-frame."),
        _("A fixed seed repeats a result: {p}settings seed 42, or {p}settings seed random.", p=command_prefix),
    ])


def setting_changed(key: str, value: object) -> Text:
    return setting_button(key, value)
