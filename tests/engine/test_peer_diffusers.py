"""The engine side by side with a peer implementation: diffusers' WanImageToVideoPipeline on the same tiny
transformers, VAE, text encoder, tokenizer, photo, seed and timestep grid must give the same final latents.

The pipeline is the reference for plain Wan 2.2 I2V (huggingface/diffusers
src/diffusers/pipelines/wan/pipeline_wan_i2v.py): prompt cleaning, `prepare_latents` (VAE-encoded
[frame, black frames], first-frame mask), the `boundary_ratio` expert switch, classifier-free guidance and the
flow-matching Euler step. The engine runs it as `last-frame` chaining, which is plain Wan I2V.
Its `__call__` has no `sigmas=` argument, so a scheduler whose `set_timesteps` passes the reference grid
linspace(1, 0, n + 1)[:-1] stands in (the grid of SVI's `set_timesteps_wan`, see engine/sampling.py).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
from PIL import Image

import engine.svi as svi
from engine.photo import fit_photo, image_to_array, load_photo

# Extra spaces, a newline and a doubly escaped ampersand: both sides must clean them the same way.
PROMPT = "a man  walks\n toward the sea &amp;amp; the camera"


class ReferenceGrid(FlowMatchEulerDiscreteScheduler):
    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        n = num_inference_steps
        super().set_timesteps(num_inference_steps=n, device=device, sigmas=np.linspace(1.0, 0.0, n + 1)[:-1])


def engine_latents(models, photo, prompts, settings, monkeypatch) -> list[torch.Tensor]:
    """Run the engine's story loop and keep the final latents of each segment (what it decodes)."""
    seen = []
    decode = svi.decode_latents

    def keep(models_, z):
        seen.append(z.clone())
        return decode(models_, z)

    monkeypatch.setattr(svi, "decode_latents", keep)
    results = svi.generate_story(models, photo, prompts, settings)
    return seen, results


def make_pipeline(models, settings, *, two_experts: bool) -> WanImageToVideoPipeline:
    pipe = WanImageToVideoPipeline(
        tokenizer=models.tokenizer, text_encoder=models.text_encoder, vae=models.vae,
        scheduler=ReferenceGrid(num_train_timesteps=1000, shift=settings.shift),
        transformer=models.transformer, transformer_2=models.transformer_2 if two_experts else None,
        boundary_ratio=settings.boundary_ratio if two_experts else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_latents(models, image: np.ndarray, settings, *, two_experts: bool, prompt: str = PROMPT,
                     seed: int | None = None, last_image: np.ndarray | None = None) -> torch.Tensor:
    pipe = make_pipeline(models, settings, two_experts=two_experts)
    kwargs = {"guidance_scale_2": settings.guidance_low} if two_experts else {}
    if last_image is not None:
        kwargs["last_image"] = Image.fromarray(last_image)
    out = pipe(image=Image.fromarray(image), prompt=prompt, negative_prompt=settings.negative_prompt,
               height=settings.height, width=settings.width, num_frames=settings.num_frames,
               num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_high,
               generator=torch.Generator("cpu").manual_seed(settings.seed if seed is None else seed),
               output_type="latent", max_sequence_length=models.max_sequence_length, **kwargs)
    return out.frames[0]  # (16, T, h, w), normalised latents


def photo_frame(photo: bytes, settings) -> np.ndarray:
    return image_to_array(fit_photo(load_photo(photo), settings.width, settings.height))  # (H, W, 3)


@pytest.fixture
def plain_wan(tiny_settings):
    """Plain Wan I2V: last-frame chaining, 9 frames (3 latents), seed 11."""
    return replace(tiny_settings, chaining="last-frame", num_frames=9, seed=11)


def test_one_expert_matches_the_pipeline(tiny_models, photo, plain_wan, monkeypatch):
    # boundary 0: every step on the first transformer, like the pipeline without transformer_2
    settings = replace(plain_wan, boundary_ratio=0.0, num_inference_steps=4)
    (z,), _ = engine_latents(tiny_models, photo, [PROMPT], settings, monkeypatch)
    ref = pipeline_latents(tiny_models, photo_frame(photo, settings), settings, two_experts=False)
    assert z.shape == ref.shape == (16, 3, settings.height // 8, settings.width // 8)
    torch.testing.assert_close(z, ref.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("steps, guidance_high, guidance_low", [
    (4, 1.0, 1.0),  # the fast recipe's sampling: 2 + 2 steps, no negative pass
    (8, 1.0, 1.0),  # 4 + 4 at boundary 0.875
    (8, 4.0, 2.0),  # guidance, different per expert
])
def test_two_experts_match_the_pipeline_with_boundary_ratio(tiny_models, photo, plain_wan, monkeypatch,
                                                            steps, guidance_high, guidance_low):
    settings = replace(plain_wan, boundary_ratio=0.875, num_inference_steps=steps,
                       guidance_high=guidance_high, guidance_low=guidance_low)
    (z,), _ = engine_latents(tiny_models, photo, [PROMPT], settings, monkeypatch)
    ref = pipeline_latents(tiny_models, photo_frame(photo, settings), settings, two_experts=True)
    torch.testing.assert_close(z, ref.float(), rtol=1e-4, atol=1e-4)
    if guidance_high == 1.0 and steps == 8:  # the comparison has teeth: one expert on the same inputs differs
        one = pipeline_latents(tiny_models, photo_frame(photo, settings), settings, two_experts=False)
        assert (one.float() - z).abs().max() > 1e-2


def test_later_last_frame_segment_is_the_pipeline_run_from_the_last_frame(tiny_models, photo, plain_wan,
                                                                         monkeypatch):
    settings = replace(plain_wan, boundary_ratio=0.875, num_inference_steps=4)
    latents, results = engine_latents(tiny_models, photo, ["a man walks", PROMPT], settings, monkeypatch)
    last_frame = results[0].carry.numpy()  # (H, W, 3) uint8, the last decoded frame of segment 0
    ref = pipeline_latents(tiny_models, last_frame, settings, two_experts=True, seed=settings.seed + 1)
    torch.testing.assert_close(latents[1], ref.float(), rtol=1e-4, atol=1e-4)


def test_prompts_are_cleaned_like_the_pipeline_cleans_them(tiny_models, photo, plain_wan, monkeypatch):
    from diffusers.pipelines.wan.pipeline_wan_i2v import prompt_clean

    for text in (PROMPT, "  a cat &amp; dog ", "caf\u00c3\u00a9 &lt;b&gt; run", "x\t\ty"):
        assert svi.clean_prompt(text) == prompt_clean(text)
    assert svi.clean_prompt(PROMPT) == "a man walks toward the sea & the camera"
    # the cleaning is what makes the engine agree: without it the tiny tokenizer sees other tokens
    settings = replace(plain_wan, boundary_ratio=0.0)
    (z,), _ = engine_latents(tiny_models, photo, [PROMPT], settings, monkeypatch)
    monkeypatch.setattr(svi, "clean_prompt", lambda text: text)
    (raw,), _ = engine_latents(tiny_models, photo, [PROMPT], settings, monkeypatch)
    assert not torch.allclose(z, raw, atol=1e-4)


# -- loops: the end frame as diffusers' `last_image` puts it --------------------------------------------------
def test_loop_end_condition_and_mask_are_prepare_latents_with_last_image(tiny_models, photo, plain_wan):
    """The last segment of a last-frame loop: VAE([last frame of k-1, black x (F - 2), photo]) and a mask with
    frame 0 (4 times) and the final frame known, i.e. [0, 0, 0, 1] on the final latent (pipeline_wan_i2v.py
    `prepare_latents(image, ..., last_image)`)."""
    from tests.support.engine_helpers import record_story

    settings = replace(plain_wan, loop=True)
    rec = record_story(tiny_models, photo, ["a man walks", PROMPT], settings)
    x = next(x for k, _, _, x in rec.calls if k == 1)[0]  # (36, T, h, w): noise, mask, condition

    pipe = make_pipeline(tiny_models, settings, two_experts=True)
    H, W = settings.height, settings.width
    image = pipe.video_processor.preprocess(Image.fromarray(rec.results[0].carry.numpy()), height=H, width=W)
    last = pipe.video_processor.preprocess(Image.fromarray(photo_frame(photo, settings)), height=H, width=W)
    _, condition = pipe.prepare_latents(image, 1, 16, H, W, settings.num_frames, torch.float32, torch.device("cpu"),
                                        torch.Generator("cpu").manual_seed(0), last_image=last)
    assert condition.shape == (1, 20, settings.num_latent_frames, H // 8, W // 8)
    torch.testing.assert_close(x[16:36], condition[0], rtol=1e-5, atol=1e-5)
    assert condition[0, :4, -1, 0, 0].tolist() == [0.0, 0.0, 0.0, 1.0]  # only the last of its 4 frames is known
    assert x[16:20, -1, 0, 0].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_one_prompt_loop_is_the_pipeline_from_the_photo_to_the_photo(tiny_models, photo, plain_wan, monkeypatch):
    settings = replace(plain_wan, loop=True, boundary_ratio=0.875, num_inference_steps=4)
    (z,), _ = engine_latents(tiny_models, photo, [PROMPT], settings, monkeypatch)
    frame = photo_frame(photo, settings)
    ref = pipeline_latents(tiny_models, frame, settings, two_experts=True, last_image=frame)
    torch.testing.assert_close(z, ref.float(), rtol=1e-4, atol=1e-4)
    plain = pipeline_latents(tiny_models, frame, settings, two_experts=True)  # teeth: without the end it differs
    assert (plain.float() - z).abs().max() > 1e-3
