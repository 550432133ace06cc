"""Story options written before the prompts ("loop: walk | run") and their checks."""
from __future__ import annotations

import pytest

from storage.errors import BadSetting, InputError
from storage.options import check_story_options, split_options


@pytest.mark.parametrize("text, settings, rest", [
    ("walk | run | fly", {}, "walk | run | fly"),
    ("loop: walk | run | fly", {"loop": True}, "walk | run | fly"),
    ("  Loop:   walk", {"loop": True}, "walk"),
    ("loop:on walk", {"loop": True}, "walk"),
    ("loop:off walk", {"loop": False}, "walk"),
    ("loop:0.8 walk", {"loop": True, "loop_strength": 0.8}, "walk"),
    ("loop:1 color:anchor walk | run", {"loop": True, "loop_strength": 1.0, "color_match": "anchor"}, "walk | run"),
    ("colour:ANCHOR loop: walk", {"color_match": "anchor", "loop": True}, "walk"),
    ("color_match:off walk", {"color_match": "off"}, "walk"),
    ("loop:|walk", {"loop": True}, "|walk"),  # the separator ends the option word
    ("loop:", {"loop": True}, ""),  # options and no prompts: the prompt check says the story is empty
    ("note: the cat sleeps", {}, "note: the cat sleeps"),  # not an option name: a prompt
    ("walk | loop: run", {}, "walk | loop: run"),  # options only count at the start
    ("loop:\u200b walk", {"loop": True}, "walk"),  # a zero-width space is dropped like in prompts
])
def test_options_before_the_prompts_become_settings(text, settings, rest):
    assert split_options(text) == (settings, rest)


@pytest.mark.parametrize("text, message", [
    ("loop:maybe walk", "loop:maybe is not a loop setting; write loop: to end the story on its first frame, "
                        "or loop:0.8 for a looser end (a strength above 0 and at most 1)."),
    ("loop:walk | run", "loop:walk is not a loop setting"),
    ("loop:1.5 walk", "loop:1.5: the loop strength must be above 0 and at most 1 (1 ends exactly on the first frame; lower values loosen the end)"),
    ("loop:0 walk", "loop:0: the loop strength must be above 0"),
    ("loop:nan walk", "loop:nan: the loop strength"),
    ("color:sepia walk", "color:sepia is not a colour match mode; use color:anchor to keep every later "
                         "segment's colours on the photo's, or color:off."),
    ("loop:" + "9" * 500 + " walk", "the loop strength must be above 0"),  # 1e500 is inf
])
def test_bad_option_values_are_named_with_what_to_write(text, message):
    with pytest.raises(BadSetting) as err:
        split_options(text)
    assert message in str(err.value) and isinstance(err.value, InputError)
    assert len(str(err.value)) < 300  # an excerpt of the value, never the whole input


def test_settings_from_parameters_are_checked_too():
    check_story_options({"loop": True, "loop_strength": 0.5, "color_match": "anchor", "seed": 3})
    for bad, message in [({"loop": "maybe"}, "loop must be true or false but is 'maybe'"),
                         ({"loop_strength": 2}, "loop_strength is 2"),
                         ({"loop_strength": True}, "loop_strength is True"),
                         ({"color_match": "sepia"}, "color_match must be one of off, anchor but is 'sepia'")]:
        with pytest.raises(BadSetting, match=message):
            check_story_options(bad)
