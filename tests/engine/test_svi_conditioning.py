"""The SVI 2.0 Pro conditioning and the expert switch, checked on the model inputs themselves."""
from __future__ import annotations

import torch

from engine.sampling import segment_timesteps
from tests.support.engine_helpers import PROMPTS, record_story


def first_input(story, segment):
    return next(x for k, _, _, x in story.calls if k == segment)[0]  # (36, T, h, w)

def test_model_input_has_36_channels_of_noise_mask_and_condition(story, tiny_settings):
    x = first_input(story, 0)
    T = tiny_settings.num_latent_frames
    assert x.shape == (36, T, tiny_settings.height // 8, tiny_settings.width // 8)

def test_anchor_at_latent_0_and_mask_only_on_latent_0(story):
    anchors = []
    for k in range(len(PROMPTS)):
        x = first_input(story, k)
        mask, cond = x[16:20], x[20:36]  # (4, T, h, w), (16, T, h, w)
        assert torch.all(mask[:, 0] == 1)
        assert torch.all(mask[:, 1:] == 0)
        assert cond[:, 0].abs().sum() > 0
        anchors.append(cond[:, 0])
    # the anchor is encoded once per story and is the same in every segment
    assert torch.equal(anchors[0], anchors[1]) and torch.equal(anchors[1], anchors[2])

def test_previous_last_latent_sits_at_latent_1_only_after_segment_0(story):
    x0 = first_input(story, 0)
    assert torch.all(x0[20:36, 1:] == 0)  # segment 0: nothing but the anchor
    for k in (1, 2):
        cond = first_input(story, k)[20:36]
        previous = story.results[k - 1].carry  # (16, T, h, w) z_{k-1}
        assert torch.equal(cond[:, 1], previous[:, -1].to(cond.dtype))
        assert torch.all(cond[:, 2:] == 0)

def test_condition_is_the_same_on_every_step_of_a_segment(story):
    for k in range(len(PROMPTS)):
        inputs = [x[0, 16:] for seg, _, _, x in story.calls if seg == k]
        assert all(torch.equal(inputs[0], later) for later in inputs[1:])

def test_high_noise_expert_runs_exactly_while_t_is_at_or_above_the_boundary(story, tiny_settings):
    timesteps = segment_timesteps(tiny_settings)
    boundary = tiny_settings.boundary_ratio * 1000
    expected = ["high" if float(t) >= boundary else "low" for t in timesteps]
    assert expected.count("high") == 2 and expected.count("low") == 2  # 4 steps at shift 5 split 2 + 2
    for k in range(len(PROMPTS)):
        seen = [(name, t) for seg, name, t, _ in story.calls if seg == k]
        assert [name for name, _ in seen] == expected
        assert [t for _, t in seen] == [float(t) for t in timesteps]

def test_boundary_moves_the_switch(tiny_models, photo, tiny_settings, settings_with):

    settings = settings_with(tiny_settings, boundary_ratio=0.0, num_frames=5)
    rec = record_story(tiny_models, photo, ["walk"], settings)
    assert [name for _, name, _, _ in rec.calls] == ["high"] * settings.num_inference_steps

def test_guidance_runs_a_negative_pass_per_step(tiny_models, photo, tiny_settings, settings_with):

    settings = settings_with(tiny_settings, guidance_high=3.5, guidance_low=3.5, num_frames=5)
    rec = record_story(tiny_models, photo, ["walk"], settings)
    assert len(rec.calls) == 2 * settings.num_inference_steps


def test_guidance_is_per_expert(tiny_models, photo, tiny_settings, settings_with):
    # 4 steps split 2 + 2: guidance only on the high-noise expert adds one negative pass per high step
    settings = settings_with(tiny_settings, guidance_high=2.0, guidance_low=1.0, num_frames=5)
    rec = record_story(tiny_models, photo, ["walk"], settings)
    assert [name for _, name, _, _ in rec.calls] == ["high", "high", "high", "high", "low", "low"]


def test_last_frame_chaining_pads_with_encoded_black_frames(tiny_models, photo, tiny_settings, settings_with):
    """Plain Wan I2V (Wan-Video/Wan2.2 wan/image2video.py): y = VAE([frame, zeros x (F - 1)]), not zero latents."""
    from engine.photo import fit_photo, image_to_array, load_photo

    settings = settings_with(tiny_settings, chaining="last-frame", num_frames=9)
    rec = record_story(tiny_models, photo, ["walk"], settings)
    x = rec.calls[0][3][0]  # (36, T, h, w)
    mask, cond = x[16:20], x[20:36]
    assert torch.all(mask[:, 0] == 1) and torch.all(mask[:, 1:] == 0)
    frame = image_to_array(fit_photo(load_photo(photo), settings.width, settings.height))  # (H, W, 3)
    first = torch.from_numpy(frame.copy()).permute(2, 0, 1).float() / 127.5 - 1.0  # (3, H, W)
    video = torch.zeros(1, 3, settings.num_frames, settings.height, settings.width)
    video[0, :, 0] = first
    vae = tiny_models.vae
    with torch.no_grad():
        z = vae.encode(video).latent_dist.mode()[0]  # (16, T, h, w)
    mean = torch.tensor(vae.config.latents_mean).view(16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(16, 1, 1, 1)
    torch.testing.assert_close(cond, (z - mean) / std, rtol=1e-5, atol=1e-5)
    assert cond[:, 1:].abs().sum() > 0  # the black frames encode to non-zero latents
