"""A whole story on the tiny preset: segments, frame counts, mp4s, determinism, resume and cancel."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.models.config import EngineConfig
from engine.errors import Cancelled
from engine.models.loading import Models, load_models
from engine.svi import Progress, generate_story
from engine.video import probe_num_frames, read_frames, stitch, write_mp4
from tests.support.engine_helpers import PROMPTS, make_photo, record_story
from storage.errors import BadSetting, EmptyPrompt


def test_three_prompts_give_three_segments_of_new_frames(story, tiny_settings):
    results = story.results
    assert [r.index for r in results] == [0, 1, 2] == story.segments
    assert [r.prompt for r in results] == PROMPTS
    n = tiny_settings.num_frames
    assert [len(r.frames) for r in results] == [n, n - 5, n - 5]  # svi-pro drops 5 frames at each seam
    for r in results:
        assert r.frames.dtype == np.uint8
        assert r.frames.shape[1:] == (tiny_settings.height, tiny_settings.width, 3)
        assert r.carry.device.type == "cpu"
        assert r.carry.shape == (16, tiny_settings.num_latent_frames, tiny_settings.height // 8, tiny_settings.width // 8)
        assert r.seconds > 0
    # the smoke model must stay cheap on 2 CPU cores (a few seconds; 30 s leaves room for a busy CI box)
    assert sum(r.seconds for r in results) < 30


def test_progress_reports_every_step_of_every_segment(story, tiny_settings):
    steps = tiny_settings.num_inference_steps
    expected = [Progress(k, 3, i, steps) for k in range(3) for i in range(1, steps + 1)]
    assert story.progress == expected


def test_segments_and_stitched_story_decode_with_the_right_frame_counts(story, tiny_settings, tmp_path):
    paths = [write_mp4(r.frames, tmp_path / f"segment_{r.index:03d}.mp4", fps=tiny_settings.fps) for r in story.results]
    for path, r in zip(paths, story.results):
        decoded = read_frames(path)
        assert decoded.shape == r.frames.shape
        # lossy H.264, but the picture must be the same picture
        assert np.abs(decoded.astype(int) - r.frames.astype(int)).mean() < 20
    out = stitch(paths, tmp_path / "story.mp4")
    assert probe_num_frames(out) == sum(len(r.frames) for r in story.results)


def test_same_seed_gives_identical_frames_and_another_seed_does_not(tiny_models, photo, tiny_settings, settings_with,
                                                                   story):
    again = generate_story(tiny_models, photo, PROMPTS[:2], tiny_settings)
    for a, b in zip(again, story.results):
        assert np.array_equal(a.frames, b.frames)
    other = generate_story(tiny_models, photo, PROMPTS[:1], settings_with(tiny_settings, seed=7))
    assert not np.array_equal(other[0].frames, story.results[0].frames)


def test_resume_from_segment_2_is_bit_identical(tiny_models, photo, tiny_settings, story):
    resumed = generate_story(tiny_models, photo, PROMPTS, tiny_settings, start_segment=2,
                             carry=story.results[1].carry.clone())
    assert [r.index for r in resumed] == [2]
    assert np.array_equal(resumed[0].frames, story.results[2].frames)
    assert torch.equal(resumed[0].carry, story.results[2].carry)


def test_each_segment_uses_its_own_seed(tiny_models, photo, tiny_settings, settings_with, story):
    # segment 1 of seed 0 and segment 0 of seed 1 draw the same noise; their inputs differ only by the motion latent
    rec = record_story(tiny_models, photo, PROMPTS[1:2], settings_with(tiny_settings, seed=1))
    seg1_noise = next(x for k, _, _, x in story.calls if k == 1)[0, :16]
    assert torch.equal(rec.calls[0][3][0, :16], seg1_noise)
    seg0_noise = next(x for k, _, _, x in story.calls if k == 0)[0, :16]
    assert not torch.equal(seg0_noise, seg1_noise)


def test_last_frame_chaining_feeds_the_last_frame_forward(tiny_models, photo, tiny_settings, settings_with):
    settings = settings_with(tiny_settings, chaining="last-frame", num_frames=9)
    rec = record_story(tiny_models, photo, PROMPTS[:2], settings)
    first, second = rec.results
    assert first.carry.shape == (settings.height, settings.width, 3)
    assert torch.equal(first.carry, torch.from_numpy(np.concatenate([first.frames])[-1]))
    assert len(second.frames) == settings.num_frames - 1  # only frame 0 repeats the carried frame
    x1 = next(x for k, _, _, x in rec.calls if k == 1)[0]
    x0 = next(x for k, _, _, x in rec.calls if k == 0)[0]
    assert not torch.equal(x0[20:, 0], x1[20:, 0])  # latent 0 is the new input frame, not the photo
    resumed = generate_story(tiny_models, photo, PROMPTS[:2], settings, start_segment=1, carry=first.carry)
    assert np.array_equal(resumed[0].frames, second.frames)


def test_portrait_photo_swaps_height_and_width(tiny_models, tiny_settings, settings_with):
    portrait = make_photo(width=120, height=200)
    results = generate_story(tiny_models, portrait, ["walk"], settings_with(tiny_settings, num_frames=5))
    assert results[0].frames.shape[1:3] == (tiny_settings.width, tiny_settings.height)


def test_cancel_is_checked_between_steps(tiny_models, photo, tiny_settings):
    checks = []

    def should_cancel():
        checks.append(1)
        return len(checks) > 2

    segments = []
    with pytest.raises(Cancelled):
        generate_story(tiny_models, photo, PROMPTS, tiny_settings, on_segment=segments.append,
                       should_cancel=should_cancel)
    assert len(checks) == 3 and segments == []


class Untouchable:
    def __getattr__(self, name):
        raise AssertionError(f"weights were touched ({name}) before the inputs were checked")


@pytest.mark.parametrize(
    "prompts, changes, error",
    [
        ([], {}, EmptyPrompt),
        (["walk", "  "], {}, EmptyPrompt),
        (["walk"], {"start_segment": 1}, BadSetting),
        (["walk", "run"], {"start_segment": 1}, BadSetting),  # resume without a carry
        (["walk", "run"], {"start_segment": 1, "carry": torch.zeros(16, 2, 2, 2)}, BadSetting),  # wrong shape
        (["walk", "run"], {"settings": "5 frames"}, BadSetting),  # later segments would be empty
    ],
)
def test_bad_inputs_fail_before_any_weight_is_touched(photo, tiny_settings, prompts, changes, error):
    untouchable = Models(*(Untouchable(),) * 5, device=torch.device("cpu"), dtype=torch.float32,
                         preset="tiny", label="tiny")
    if changes.pop("settings", None):
        tiny_settings = replace(tiny_settings, num_frames=5)
    with pytest.raises(error):
        generate_story(untouchable, photo, prompts, tiny_settings, **changes)


def test_models_stay_loaded_between_calls():
    config = EngineConfig(preset="tiny", models_dir=Path("unused-for-tiny"))
    models = load_models(config)
    assert load_models(config) is models
    assert models.is_random_weights and "random weights" in models.label


def test_svi_pro_on_real_weights_without_the_svi_lora_is_refused(photo, tiny_settings):
    plain = Models(*(Untouchable(),) * 5, device=torch.device("cpu"), dtype=torch.float32,
                   preset="q4_k_m", label="Wan 2.2 I2V A14B Q4_K_M", is_random_weights=False)  # loaded without LoRAs
    with pytest.raises(BadSetting, match="svi-pro chaining needs the SVI LoRA, but preset q4_k_m was loaded without"):
        generate_story(plain, photo, ["walk"], tiny_settings)
