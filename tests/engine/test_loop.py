"""Loop stories: the last segment's conditioning holds the anchor at both ends, only the last segment changes,
and the stitched loop drops the frames that repeat its first frame."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import engine.svi as svi
from engine.config import GenerationSettings
from engine.video import probe_num_frames, read_frames, stitch, write_mp4
from storage.errors import BadSetting
from tests.support.engine_helpers import PROMPTS, record_story


def inputs_of(rec, segment: int) -> list[torch.Tensor]:
    """Every model input (36, T, h, w) of one segment, in call order."""
    return [x[0] for k, _, _, x in rec.calls if k == segment]


@pytest.fixture(scope="module")
def loop_story(tiny_models, photo, tiny_settings):
    """The session's 3-prompt story again, as a loop: same seed, same settings."""
    return record_story(tiny_models, photo, PROMPTS, GenerationSettings(**{**tiny_settings.to_dict(), "loop": True}))


def test_last_segment_holds_the_anchor_at_latent_0_and_at_the_final_latent(loop_story, story):
    x = inputs_of(loop_story, 2)[0]
    mask, cond = x[16:20], x[20:36]  # (4, T, h, w), (16, T, h, w)
    anchor = inputs_of(story, 0)[0][20:36, 0]  # the anchor of the plain story
    assert torch.equal(cond[:, 0], anchor) and torch.equal(cond[:, -1], anchor)
    assert torch.equal(cond[:, 1], loop_story.results[1].carry[:, -1].to(cond.dtype))  # the motion latent
    assert torch.all(cond[:, 2:-1] == 0)
    assert torch.all(mask[:, 0] == 1) and torch.all(mask[:, -1] == 1) and torch.all(mask[:, 1:-1] == 0)
    # the layout holds on every step of the segment
    assert all(torch.equal(later[16:], x[16:]) for later in inputs_of(loop_story, 2)[1:])


def test_earlier_segments_are_bit_identical_to_the_plain_story(loop_story, story):
    for k in (0, 1):
        assert all(torch.equal(a, b) for a, b in zip(inputs_of(loop_story, k), inputs_of(story, k), strict=True))
        assert np.array_equal(loop_story.results[k].frames, story.results[k].frames)
        assert torch.equal(loop_story.results[k].carry, story.results[k].carry)
    # the last segment differs only by its end: same noise, same anchor and motion latent
    plain, looped = inputs_of(story, 2)[0], inputs_of(loop_story, 2)[0]
    assert torch.equal(plain[:16], looped[:16]) and torch.equal(plain[20:36, :-1], looped[20:36, :-1])
    assert torch.all(plain[20:36, -1] == 0) and not torch.equal(plain[20:36, -1], looped[20:36, -1])


def test_one_prompt_loop_is_a_single_segment_from_the_photo_back_to_the_photo(tiny_models, photo, tiny_settings):
    settings = GenerationSettings(**{**tiny_settings.to_dict(), "loop": True})
    rec = record_story(tiny_models, photo, ["a man waves"], settings)
    cond, mask = rec.calls[0][3][0, 20:36], rec.calls[0][3][0, 16:20]
    assert torch.equal(cond[:, 0], cond[:, -1]) and cond[:, 0].abs().sum() > 0
    assert torch.all(cond[:, 1:-1] == 0)  # no motion latent: there is no previous segment
    assert torch.all(mask[:, 0] == 1) and torch.all(mask[:, -1] == 1) and torch.all(mask[:, 1:-1] == 0)
    assert len(rec.results[0].frames) == settings.num_frames - 4 == settings.story_frames(1)


def test_end_strength_scales_only_the_end_latent(tiny_models, photo, tiny_settings):
    settings = GenerationSettings(**{**tiny_settings.to_dict(), "loop": True, "loop_strength": 0.5})
    rec = record_story(tiny_models, photo, ["a man waves"], settings)
    cond, mask = rec.calls[0][3][0, 20:36], rec.calls[0][3][0, 16:20]
    torch.testing.assert_close(cond[:, -1], 0.5 * cond[:, 0], rtol=0, atol=1e-6)
    assert torch.all(mask[:, -1] == 1)  # still marked known, only weaker (as WanVideoWrapper's end_latent_strength)


@pytest.mark.parametrize("chaining, num_frames, expected", [
    ("svi-pro", 13, 13 + 8 - 4),  # 2 segments: 13 + (13 - 5) - 4 repeating the photo at the end
    ("last-frame", 9, 9 + 8 - 1),  # 9 + (9 - 1) - the final frame, which is the photo
])
def test_stitched_loop_drops_the_frames_that_repeat_the_first_frame(tiny_models, photo, tiny_settings, monkeypatch,
                                                                    tmp_path, chaining, num_frames, expected):
    settings = GenerationSettings(**{**tiny_settings.to_dict(), "loop": True, "chaining": chaining,
                                     "num_frames": num_frames})
    decoded = []
    decode = svi.decode_latents
    monkeypatch.setattr(svi, "decode_latents", lambda m, z: decoded.append(decode(m, z)) or decoded[-1])
    results = svi.generate_story(tiny_models, photo, PROMPTS[:2], settings)
    assert settings.story_frames(2) == expected == sum(len(r.frames) for r in results)
    tail = settings.loop_tail_frames
    assert tail == {"svi-pro": 4, "last-frame": 1}[chaining]
    assert np.array_equal(results[-1].frames, decoded[-1][settings.seam_frames:-tail])  # exactly the tail is gone
    assert np.array_equal(results[0].frames, decoded[0])  # the first segment keeps all its frames

    paths = [write_mp4(r.frames, tmp_path / f"segment_{r.index}.mp4", fps=settings.fps) for r in results]
    video = stitch(paths, tmp_path / "loop.mp4")
    assert probe_num_frames(video) == expected
    frames = read_frames(video).astype(int)
    assert np.abs(frames[-1] - frames[0]).mean() > 5  # the last frame leads into the first, it does not repeat it


def test_resuming_the_last_segment_of_a_loop_is_bit_identical(tiny_models, photo, loop_story, tiny_settings):
    settings = GenerationSettings(**{**tiny_settings.to_dict(), "loop": True})
    resumed = svi.generate_story(tiny_models, photo, PROMPTS, settings, start_segment=2,
                                 carry=loop_story.results[1].carry.clone())
    assert np.array_equal(resumed[0].frames, loop_story.results[2].frames)


def test_loop_settings_round_trip_and_bad_values_are_named():
    s = GenerationSettings.from_dict({"loop": True, "loop_strength": 1, "color_match": "anchor"})
    assert (s.loop, s.loop_strength, s.color_match) == (True, 1.0, "anchor")
    assert GenerationSettings.from_dict(s.to_dict()) == s
    assert GenerationSettings().loop is False and GenerationSettings().color_match == "off"
    with pytest.raises(BadSetting, match="setting 'loop' must be bool but is 'yes'"):
        GenerationSettings.from_dict({"loop": "yes"})
    with pytest.raises(BadSetting, match=r"loop_strength is 1.5: the loop strength must be above 0 and at most 1"):
        GenerationSettings(loop=True, loop_strength=1.5)
    with pytest.raises(BadSetting, match="loop_strength is 0.0"):
        GenerationSettings(loop=True, loop_strength=0.0)
    with pytest.raises(BadSetting, match=r"color_match must be one of \('off', 'anchor'\) but is 'sepia'"):
        GenerationSettings(color_match="sepia")


def test_a_loop_too_short_for_its_seams_is_refused_before_any_weight_is_touched(photo):
    settings = GenerationSettings(loop=True, num_frames=9, height=64, width=112)  # svi-pro: 9 - 5 - 4 = 0 left
    with pytest.raises(BadSetting, match="num_frames must be above 9 for a loop of 2 segment"):
        svi.generate_story(object(), photo, ["walk", "run"], settings)
