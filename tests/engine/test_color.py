"""Seam colour matching: the Lab conversion, the statistics transfer, and `color_match` in a story."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import engine.svi as svi
from engine.color import lab_stats, lab_to_srgb, match_colors, srgb_to_lab
from engine.config import GenerationSettings
from tests.support.engine_helpers import PROMPTS

# sRGB (D65) -> CIELAB, as Bruce Lindbloom's CIE colour calculator (brucelindbloom.com) gives them.
PUBLISHED_LAB = [
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
    ((1.0, 0.0, 0.0), (53.2408, 80.0925, 67.2032)),
    ((0.0, 1.0, 0.0), (87.7347, -86.1827, 83.1793)),
    ((0.0, 0.0, 1.0), (32.2970, 79.1875, -107.8602)),
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
]


SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "chelsea.jpg"  # a real photo, real colours


def photo_frames(photo: bytes | Path, settings, n: int = 6) -> np.ndarray:
    """n frames of the fitted photo, each shifted a little, as a stand-in segment: (n, H, W, 3) uint8."""
    from engine.photo import fit_photo, image_to_array, load_photo

    frame = image_to_array(fit_photo(load_photo(photo), settings.width, settings.height))  # (H, W, 3)
    return np.stack([np.roll(frame, 2 * i, axis=1) for i in range(n)])


def test_srgb_primaries_land_on_published_lab_values():
    rgb = torch.tensor([c for c, _ in PUBLISHED_LAB], dtype=torch.float64)
    expected = torch.tensor([lab for _, lab in PUBLISHED_LAB], dtype=torch.float64)
    torch.testing.assert_close(srgb_to_lab(rgb), expected, rtol=0, atol=2e-4)


def test_every_8_bit_colour_survives_the_round_trip():
    levels = torch.arange(0, 256, 5, dtype=torch.float32) / 255.0  # 52^3 colours, the corners included
    rgb = torch.cartesian_prod(levels, levels, levels)  # (N, 3)
    back = (lab_to_srgb(srgb_to_lab(rgb)) * 255).round()
    assert torch.equal(back, (rgb * 255).round())


def test_a_colour_cast_segment_comes_back_to_the_anchor_statistics(tiny_settings):
    anchor = photo_frames(SAMPLE, tiny_settings, n=1)
    segment = photo_frames(SAMPLE, tiny_settings)
    cast = np.clip(segment * np.array([1.15, 0.9, 0.7]) + np.array([25, 0, -10]), 0, 255).astype(np.uint8)
    target, before = lab_stats(anchor), lab_stats(cast)
    assert (before.mean - target.mean).abs().max() > 20  # a strong warm cast: far off in a* and b*
    assert (before.std / target.std - 1).abs().max() > 0.1

    after = lab_stats(match_colors(cast, target))
    torch.testing.assert_close(after.mean, target.mean, rtol=0, atol=0.5)  # well under 1 Lab unit (~1 JND)
    torch.testing.assert_close(after.std, target.std, rtol=0.05, atol=0)


def test_matching_frames_to_their_own_statistics_keeps_them(photo, tiny_settings):
    frames = photo_frames(photo, tiny_settings, n=3)
    out = match_colors(frames, lab_stats(frames))
    assert np.abs(out.astype(int) - frames).max() <= 1  # only float rounding


def test_color_match_in_a_story(tiny_models, photo, tiny_settings, story):
    # `off` (the default) changes nothing: each segment is its decoded latents bit for bit, minus the seam
    raw = [svi.decode_latents(tiny_models, r.carry) for r in story.results[:2]]  # svi-pro carries z_k
    assert np.array_equal(story.results[0].frames, raw[0]) and np.array_equal(story.results[1].frames, raw[1][5:])

    settings = GenerationSettings(**{**tiny_settings.to_dict(), "color_match": "anchor"})
    matched = svi.generate_story(tiny_models, photo, PROMPTS[:2], settings)
    assert torch.equal(matched[1].carry, story.results[1].carry)  # matching works on frames; latents never change
    assert np.array_equal(matched[0].frames, story.results[0].frames)  # segment 0 starts from the photo: left alone
    target = lab_stats(photo_frames(photo, tiny_settings, n=1))
    before, after = lab_stats(story.results[1].frames), lab_stats(matched[1].frames)
    assert (before.mean - target.mean).abs().max() > 2  # the random-weight segment is off the photo's colours
    torch.testing.assert_close(after.mean, target.mean, rtol=0, atol=1.5)
    assert not np.array_equal(matched[1].frames, story.results[1].frames)


def test_last_frame_chaining_carries_the_matched_frame(tiny_models, photo, tiny_settings):
    settings = GenerationSettings(**{**tiny_settings.to_dict(), "color_match": "anchor", "chaining": "last-frame",
                                     "num_frames": 9})
    results = svi.generate_story(tiny_models, photo, PROMPTS[:2], settings)
    assert torch.equal(results[1].carry, torch.from_numpy(results[1].frames[-1].copy()))  # what the viewer saw
